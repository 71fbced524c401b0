//! Where the shards run: each pinned to a CPU of its own when this
//! process's CPUs are its own, else wherever the kernel schedules them.
//!
//! A process's affinity mask says which CPUs it may run on, not that they
//! are its alone. A mask that is a strict subset of the online CPUs was
//! narrowed on purpose (taskset, systemd's `CPUAffinity=`, a cpuset, the
//! kubelet's static CPU manager giving a Guaranteed pod whole CPUs): those
//! are this process's, and a shard pinned to each keeps its core. A mask
//! of every online CPU says nothing of the kind: in a pod without
//! exclusive CPUs it is the whole node, and every gateway pod on the node
//! (and every instance of a systemd template unit on a host) would pin its
//! shards to the same first CPUs. So by default (`pin = "auto"`) only a
//! strict subset is pinned; `pin = "always"` pins whatever the mask, and
//! `pin = "never"` pins nothing. The decision is [`decide`], a function of
//! the mask, the online CPUs and the setting alone.
//!
//! A CPU quota (a Kubernetes CPU limit, cgroup `cpu.max`) limits time, not
//! CPUs: it makes no CPU the process's own, so it does not enter the
//! decision.

use std::fmt;

use crate::config::Pin;

/// Where the shards go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Shard `i` on CPU `cpus[i % cpus.len()]`.
    Pinned(Vec<usize>),
    /// Anywhere in the affinity mask, as the kernel schedules them.
    Unpinned,
}

impl Placement {
    /// The CPU shard `shard` is pinned to, if pinned.
    pub fn cpu(&self, shard: usize) -> Option<usize> {
        match self {
            Self::Pinned(cpus) => cpus.get(shard % cpus.len().max(1)).copied(),
            Self::Unpinned => None,
        }
    }
}

/// Why the shards go where they go: the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The mask is a strict subset of the online CPUs.
    OwnCpus { mask: Vec<usize>, online: usize },
    /// The mask is the whole machine and `pin = "always"`.
    Forced { mask: Vec<usize> },
    /// The mask is the whole machine and `pin = "auto"`.
    WholeMachine { cpus: usize },
    /// `pin = "never"`.
    Never { mask: Vec<usize> },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OwnCpus { mask, online } => write!(
                f,
                "pinning shards to CPUs {}: the affinity mask is {} of the {online} online CPUs, \
                 this process's own",
                cpu_list(mask),
                mask.len()
            ),
            Self::Forced { mask } => write!(
                f,
                "pinning shards to CPUs {}: pin = \"always\" (the affinity mask is the whole \
                 machine)",
                cpu_list(mask)
            ),
            Self::WholeMachine { cpus } => write!(
                f,
                "not pinning: the affinity mask is the whole machine ({cpus} CPUs); set pin = \
                 \"always\" to force"
            ),
            Self::Never { mask } => write!(
                f,
                "not pinning: pin = \"never\" (shards run anywhere in the affinity mask, CPUs {})",
                cpu_list(mask)
            ),
        }
    }
}

/// The shards' placement and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub placement: Placement,
    pub reason: Reason,
}

/// Where shards go, given the affinity `mask`, the `online` CPUs and the
/// setting. A mask that holds every online CPU is the whole machine (an
/// empty `online`, unknown, counts as the mask itself).
pub fn decide(mask: &[usize], online: &[usize], pin: Pin) -> Decision {
    let whole = online.iter().all(|cpu| mask.contains(cpu));
    let pinned = Placement::Pinned(mask.to_vec());
    let (placement, reason) = match (pin, whole) {
        (Pin::Never, _) => (
            Placement::Unpinned,
            Reason::Never {
                mask: mask.to_vec(),
            },
        ),
        (Pin::Auto | Pin::Always, false) => (
            pinned,
            Reason::OwnCpus {
                mask: mask.to_vec(),
                online: online.len(),
            },
        ),
        (Pin::Always, true) => (
            pinned,
            Reason::Forced {
                mask: mask.to_vec(),
            },
        ),
        (Pin::Auto, true) => (
            Placement::Unpinned,
            Reason::WholeMachine {
                cpus: online.len().max(mask.len()),
            },
        ),
    };
    Decision { placement, reason }
}

/// The CPUs this process may run on (its affinity mask, as a container's
/// CPU set or `taskset` leaves it), from `/proc/self/status`; the online
/// CPUs where that is unreadable.
pub fn affinity_mask() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let list = status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
            parse_cpu_list(list.trim())
        })
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(online_cpus)
}

/// The machine's online CPUs (`/sys/devices/system/cpu/online`, else
/// glommio's view of the topology); empty when neither can be read.
pub fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| parse_cpu_list(list.trim()))
        .filter(|cpus| !cpus.is_empty())
        .or_else(|| {
            let set = glommio::CpuSet::online().ok()?;
            let mut cpus: Vec<usize> = set.into_iter().map(|location| location.cpu).collect();
            cpus.sort_unstable();
            cpus.dedup();
            Some(cpus)
        })
        .unwrap_or_default()
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => cpus.extend(first.parse::<usize>().ok()?..=last.parse().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Writes CPUs as the kernel does: `0-3,8,10-11`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut rest = cpus.iter().copied().peekable();
    while let Some(first) = rest.next() {
        let mut last = first;
        while let Some(&next) = rest.peek() {
            if next != last + 1 {
                break;
            }
            last = next;
            rest.next();
        }
        if !out.is_empty() {
            out.push(',');
        }
        if last == first {
            out.push_str(&first.to_string());
        } else {
            out.push_str(&format!("{first}-{last}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(
            parse_cpu_list("0-2,8,10-11"),
            Some(vec![0, 1, 2, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(cpu_list(&[0, 1, 2, 8, 10, 11]), "0-2,8,10-11");
        assert_eq!(cpu_list(&[5]), "5");
        assert_eq!(cpu_list(&[]), "");
        assert!(!affinity_mask().is_empty());
        assert!(!online_cpus().is_empty());
    }

    #[test]
    fn a_strict_subset_of_the_machine_is_pinned_as_before() {
        let online: Vec<usize> = (0..16).collect();
        // taskset -c 4-7, or the static CPU manager's exclusive CPUs.
        let mask = [4, 5, 6, 7];
        for pin in [Pin::Auto, Pin::Always] {
            let decision = decide(&mask, &online, pin);
            assert_eq!(decision.placement, Placement::Pinned(vec![4, 5, 6, 7]));
            assert_eq!(decision.placement.cpu(0), Some(4));
            assert_eq!(decision.placement.cpu(5), Some(5));
            assert_eq!(
                decision.reason.to_string(),
                "pinning shards to CPUs 4-7: the affinity mask is 4 of the 16 online CPUs, \
                 this process's own"
            );
        }
    }

    #[test]
    fn the_whole_machine_is_not_pinned_unless_forced() {
        let online: Vec<usize> = (0..16).collect();
        let decision = decide(&online, &online, Pin::Auto);
        assert_eq!(decision.placement, Placement::Unpinned);
        assert_eq!(decision.placement.cpu(0), None);
        assert_eq!(
            decision.reason.to_string(),
            "not pinning: the affinity mask is the whole machine (16 CPUs); set pin = \"always\" \
             to force"
        );
        let forced = decide(&online, &online, Pin::Always);
        assert_eq!(forced.placement, Placement::Pinned(online.clone()));
        assert!(
            forced.reason.to_string().contains("pin = \"always\""),
            "{}",
            forced.reason
        );
        // A mask holding CPUs beyond the online ones (one went offline
        // since) is still the whole machine.
        let mut wider = online.clone();
        wider.push(16);
        assert_eq!(
            decide(&wider, &online, Pin::Auto).placement,
            Placement::Unpinned
        );
        // Online CPUs unknown: the mask is all there is to go by.
        assert_eq!(
            decide(&[0, 1], &[], Pin::Auto).reason,
            Reason::WholeMachine { cpus: 2 }
        );
    }

    #[test]
    fn never_pins_nothing() {
        let online: Vec<usize> = (0..4).collect();
        for mask in [&[2][..], &online[..]] {
            let decision = decide(mask, &online, Pin::Never);
            assert_eq!(decision.placement, Placement::Unpinned);
            assert!(
                decision
                    .reason
                    .to_string()
                    .starts_with("not pinning: pin = \"never\""),
                "{}",
                decision.reason
            );
        }
    }

    #[test]
    fn one_cpu_machines_are_the_whole_machine() {
        // A one-CPU VM: nothing to share, nothing gained by pinning, and
        // the rule stays the same.
        assert_eq!(decide(&[0], &[0], Pin::Auto).placement, Placement::Unpinned);
        assert_eq!(
            decide(&[0], &[0], Pin::Always).placement,
            Placement::Pinned(vec![0])
        );
    }
}
