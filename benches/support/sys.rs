//! What the benchmark asks of the operating system: descriptors, CPU time, resident memory.

use std::time::Duration;

/// Raises the soft limit on open files to the hard limit, since a thousand idle connections
/// need two descriptors each in this one process. Returns the soft limit before and after.
pub(crate) fn raise_fd_limit() -> (libc::rlim_t, libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill, and setrlimit only
    // reads it; neither call keeps the pointer.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return (before, before);
        }
        (before, limit.rlim_cur)
    }
}

/// User plus system CPU time of the whole process so far (every thread: clients and servers).
pub(crate) fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    #[allow(unsafe_code)]
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid and writable for the duration of the call, which keeps no pointer.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) cannot fail");
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// The process's resident memory (`VmRSS` in `/proc/self/status`), in bytes.
pub(crate) fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU count, model and kernel, for the report's header.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown", str::trim)
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("nproc {cpus}, {model}, Linux {}", kernel.trim())
}

/// CPU time of the calling thread so far.
pub(crate) fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is valid and writable for the duration of the call, which keeps no pointer.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) cannot fail");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A set of CPUs threads may run on.
pub(crate) struct Affinity(libc::cpu_set_t);

impl Affinity {
    /// The CPUs the calling thread may run on now.
    pub(crate) fn current() -> Affinity {
        // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity fills the valid,
        // writable set of the size given and keeps no pointer.
        #[allow(unsafe_code)]
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            Affinity(set)
        }
    }

    /// Only the first CPU of `self`.
    pub(crate) fn first(&self) -> Affinity {
        // SAFETY: CPU_ISSET and CPU_SET only index into the sets, within CPU_SETSIZE.
        #[allow(unsafe_code)]
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if let Some(cpu) =
                (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &self.0))
            {
                libc::CPU_SET(cpu, &mut set);
            }
            Affinity(set)
        }
    }

    /// Applies to every thread of this process now, and so to the threads they start later.
    pub(crate) fn apply_to_all_threads(&self) {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // SAFETY: the set is valid for reading at the size given and is not kept. A thread
            // that has ended meanwhile only makes the call fail, which is fine.
            #[allow(unsafe_code)]
            unsafe {
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
            }
        }
    }
}
