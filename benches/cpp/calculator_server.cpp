// The reference Calculator service on Apache Thrift's own C++ servers, as a peer for
// `cargo bench --bench rpc -- --servers`. Framed transport, binary protocol.
//
//   calculator_server_cpp threadpool WORKERS   # TThreadPoolServer: a worker per connection
//   calculator_server_cpp nonblocking WORKERS  # TNonblockingServer: 1 I/O thread, WORKERS workers
//
// Listens on a free loopback port, prints "listening on 127.0.0.1:PORT", and serves until its
// standard input closes.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <thrift/concurrency/ThreadFactory.h>
#include <thrift/concurrency/ThreadManager.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/server/TNonblockingServer.h>
#include <thrift/server/TThreadPoolServer.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TNonblockingServerSocket.h>
#include <thrift/transport/TServerSocket.h>

#include "gen/Calculator.h"

using namespace apache::thrift;
using namespace apache::thrift::concurrency;
using namespace apache::thrift::protocol;
using namespace apache::thrift::server;
using namespace apache::thrift::transport;

class CalculatorHandler : public CalculatorIf {
 public:
  void ping() override {}
  int32_t add(const int32_t a, const int32_t b) override {
    return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
  }
  void echo(std::string& out, const std::string& data) override { out = data; }
  int32_t slow(const int32_t millis) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(millis));
    return millis;
  }
  void retrieve(UserProfile& out, const int32_t uid) override {
    if (uid < 0) {
      InvalidOperation err;
      err.whatOp = uid;
      err.why = "negative uid";
      throw err;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    auto stored = profiles_.find(uid);
    out = stored != profiles_.end() ? stored->second : fallback(uid);
  }
  void store(const UserProfile& user) override {
    std::lock_guard<std::mutex> lock(mutex_);
    profiles_[user.uid] = user;
  }
  void whoami(std::string& out, const bool fail) override {
    if (fail) {
      TemporaryUnavailable busy;
      busy.why = "asked to fail";
      throw busy;
    }
    out = "cpp";
  }
  void zip() override {}
  void profiles(std::vector<UserProfile>& out, const int32_t count) override {
    if (count < 0) {
      InvalidOperation err;
      err.whatOp = count;
      throw err;
    }
    for (int32_t uid = 0; uid < count; ++uid) {
      UserProfile profile;
      retrieve(profile, uid);
      out.push_back(profile);
    }
  }

 private:
  static UserProfile fallback(int32_t uid) {
    UserProfile profile;
    profile.uid = uid;
    profile.name = "Test User";
    profile.blurb = "Thrift is great";
    return profile;
  }
  std::mutex mutex_;
  std::map<int32_t, UserProfile> profiles_;
};

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: calculator_server_cpp threadpool|nonblocking WORKERS\n";
    return 2;
  }
  std::string kind = argv[1];
  int workers = std::stoi(argv[2]);
  auto handler = std::make_shared<CalculatorHandler>();
  auto processor = std::make_shared<CalculatorProcessor>(handler);
  auto protocols = std::make_shared<TBinaryProtocolFactory>();
  auto threads = ThreadManager::newSimpleThreadManager(workers);
  threads->threadFactory(std::make_shared<ThreadFactory>());
  threads->start();

  std::shared_ptr<TServer> server;
  std::function<int()> port;
  if (kind == "threadpool") {
    auto socket = std::make_shared<TServerSocket>("127.0.0.1", 0);
    socket->setKeepAlive(false);
    auto pool = std::make_shared<TThreadPoolServer>(
        processor, socket, std::make_shared<TFramedTransportFactory>(), protocols, threads);
    server = pool;
    port = [socket]() { return socket->getPort(); };
  } else if (kind == "nonblocking") {
    auto socket = std::make_shared<TNonblockingServerSocket>("127.0.0.1", 0);
    auto nonblocking = std::make_shared<TNonblockingServer>(processor, protocols, socket, threads);
    nonblocking->setNumIOThreads(1);
    server = nonblocking;
    port = [nonblocking]() { return nonblocking->getListenPort(); };
  } else {
    std::cerr << "unknown server " << kind << "\n";
    return 2;
  }
  std::thread serving([server]() { server->serve(); });
  // Wait until the socket is bound and report its port.
  for (int i = 0; i < 500 && port() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::cout << "listening on 127.0.0.1:" << port() << std::endl;
  // Serves until standard input closes.
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  server->stop();
  serving.join();
  return 0;
}
