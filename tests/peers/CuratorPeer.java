// A discovery peer built on Apache Curator's own service discovery, for interop tests.
//
//   register <hosts> <base> <name> <id> <address> <port>
//       registers the instance, prints "registered", and keeps it until standard input closes
//   query <hosts> <base> <name>
//       prints every instance of the service as Curator's JSON, one a line, then "done"
import java.io.InputStream;
import java.util.Collection;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;

public class CuratorPeer {
    public static void main(String[] args) throws Exception {
        String hosts = args[1];
        String base = args[2];
        String name = args[3];
        CuratorFramework client = CuratorFrameworkFactory.newClient(hosts, 10000, 5000,
                new ExponentialBackoffRetry(100, 5));
        client.start();
        client.blockUntilConnected();
        JsonInstanceSerializer<Object> serializer = new JsonInstanceSerializer<>(Object.class);
        ServiceDiscovery<Object> discovery = ServiceDiscoveryBuilder.builder(Object.class)
                .client(client).basePath(base).serializer(serializer).build();
        discovery.start();
        if (args[0].equals("register")) {
            ServiceInstance<Object> instance = ServiceInstance.builder()
                    .name(name).id(args[4]).address(args[5]).port(Integer.parseInt(args[6]))
                    .build();
            discovery.registerService(instance);
            System.out.println("registered");
            System.out.flush();
            InputStream in = System.in;
            while (in.read() >= 0) {
                // Holds the registration until the test closes our standard input.
            }
        } else {
            Collection<ServiceInstance<Object>> instances = discovery.queryForInstances(name);
            for (ServiceInstance<Object> instance : instances) {
                System.out.println(new String(serializer.serialize(instance), "UTF-8"));
            }
            System.out.println("done");
        }
        discovery.close();
        client.close();
    }
}
