//! What a process costs, from Linux's `/proc`: peak resident memory, CPU time and context switches.

use std::fs;

/// CPU time of one process in clock ticks: (utime + stime, cutime + cstime).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ticks {
    /// Its own user + system time.
    pub own: u64,
    /// Its reaped children's user + system time.
    pub children: u64,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, the unit of `/proc/<pid>/stat` times).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on an unknown name.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

/// Reads `/proc/<pid>/stat` (`pid` may be `"self"`): the command name and the CPU ticks.
pub fn stat(pid: &str) -> Option<(String, Ticks)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<(String, Ticks)> {
    // "pid (comm) state ppid ..."; comm may hold spaces and parentheses, so split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state is field 3 of stat(5), so utime (14) is index 11 here.
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime, cutime, cstime) = (num(11)?, num(12)?, num(13)?, num(14)?);
    Some((
        comm,
        Ticks {
            own: utime + stime,
            children: cutime + cstime,
        },
    ))
}

/// Own CPU seconds of a process (`utime + stime`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat(&pid.to_string()).map(|(_, t)| t.own as f64 / ticks_per_second())
}

/// Peak resident set size in MiB (`VmHWM` of `/proc/<pid>/status`).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

/// A size field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:` …), in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Context switches of a process: voluntary (a thread went to sleep, to be woken later) and involuntary
/// (the kernel took the CPU from a runnable thread).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switches {
    /// A thread blocked: each is one sleep and one wake-up.
    pub voluntary: u64,
    /// A thread was preempted.
    pub involuntary: u64,
}

impl Switches {
    /// The switches from `earlier` to `self`.
    pub fn since(self, earlier: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }
}

/// Context switches of all of a process's live threads (`/proc/<pid>/task/*/status`; a thread that has
/// ended takes its counts with it, so sample while the threads that matter run).
pub fn context_switches(pid: u32) -> Option<Switches> {
    let mut total = Switches::default();
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("status")) {
            let counted = parse_switches(&text);
            total.voluntary += counted.voluntary;
            total.involuntary += counted.involuntary;
        }
    }
    Some(total)
}

fn parse_switches(status: &str) -> Switches {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Switches {
        voluntary: field("voluntary_ctxt_switches:"),
        involuntary: field("nonvoluntary_ctxt_switches:"),
    }
}

/// File descriptors a process has open.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// CPU seconds used so far by every process whose command name starts with one of `names`, counting
/// reaped children too (PostgreSQL's exited backends are added to the postmaster's children time).
pub fn cpu_seconds_of(names: &[&str]) -> f64 {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some((comm, t)) = stat(pid) {
            if names.iter().any(|n| comm.starts_with(n)) {
                ticks += t.own + t.children;
            }
        }
    }
    ticks as f64 / ticks_per_second()
}

/// Busy CPU seconds of the whole machine so far (all cores; `/proc/stat`, idle and iowait excluded).
pub fn machine_busy_seconds() -> f64 {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    busy as f64 / ticks_per_second()
}

/// CPU seconds of the services a worker leans on and of this process, sampled together.
#[derive(Debug, Clone, Copy, Default)]
pub struct Services {
    /// PostgreSQL (`postgres` processes).
    pub postgres: f64,
    /// RabbitMQ (the Erlang VM, `beam.smp`).
    pub rabbitmq: f64,
    /// This benchmark (receiver, publishers, load generator).
    pub bench: f64,
    /// The whole machine (every process and the kernel).
    pub machine: f64,
}

impl Services {
    /// Samples now.
    pub fn sample() -> Self {
        Self {
            postgres: cpu_seconds_of(&["postgres"]),
            rabbitmq: cpu_seconds_of(&["beam.smp"]),
            bench: stat("self")
                .map(|(_, t)| t.own as f64 / ticks_per_second())
                .unwrap_or(0.0),
            machine: machine_busy_seconds(),
        }
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            postgres: (self.postgres - earlier.postgres).max(0.0),
            rabbitmq: (self.rabbitmq - earlier.rabbitmq).max(0.0),
            bench: (self.bench - earlier.bench).max(0.0),
            machine: (self.machine - earlier.machine).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 3 4 20 0 9 0 \
                    1000 123456 789 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let (comm, ticks) = parse_stat(line).unwrap();
        assert_eq!(comm, "my (odd) name");
        assert_eq!(ticks.own, 325);
        assert_eq!(ticks.children, 7);
    }

    #[test]
    fn status_switch_counts_parse_and_subtract() {
        let status =
            "Name:\tworker\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        let later = parse_switches(status);
        assert_eq!(
            later,
            Switches {
                voluntary: 120,
                involuntary: 7
            }
        );
        let earlier = Switches {
            voluntary: 20,
            involuntary: 9,
        };
        assert_eq!(
            later.since(earlier),
            Switches {
                voluntary: 100,
                involuntary: 0
            }
        );
    }

    #[test]
    fn this_process_has_context_switches_on_record() {
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(context_switches(std::process::id()).unwrap().voluntary > 0);
    }

    #[test]
    fn this_process_has_a_peak_rss() {
        assert!(peak_rss_mib(std::process::id()).unwrap() > 0.0);
    }
}
