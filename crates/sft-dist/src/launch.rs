//! Where this process sits in a multi-process launch, read from the launcher's variables.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::{Backend, GroupConfig};

/// This process's place in a launch by torchrun (or any launcher that sets the same variables)
/// or by Slurm's `srun`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes in the group.
    pub world_size: usize,
    /// Rank among the processes on this machine (the GPU index to use, usually).
    pub local_rank: usize,
    /// Address of rank 0, which hosts the rendezvous store.
    pub master_addr: String,
    /// Port of rank 0's rendezvous store.
    pub master_port: u16,
}

const TORCHRUN: [&str; 3] = ["RANK", "WORLD_SIZE", "LOCAL_RANK"];
const SLURM: [&str; 3] = ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"];

fn config(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

impl Launch {
    /// Read the launch from the process environment; see [`Launch::from_vars`].
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Read the launch from variables looked up by `get` (an empty value counts as unset).
    ///
    /// * torchrun style, when `RANK` or `WORLD_SIZE` is set: `RANK`, `WORLD_SIZE`, `MASTER_ADDR`
    ///   and `MASTER_PORT` are required; `LOCAL_RANK` defaults to `RANK` (a single-machine
    ///   launch by hand).
    /// * Otherwise Slurm, when `SLURM_PROCID` is set: `SLURM_PROCID`, `SLURM_NTASKS`,
    ///   `SLURM_LOCALID`, plus `MASTER_ADDR` and `MASTER_PORT` (Slurm has no rendezvous address
    ///   of its own; the batch script exports them). A batch script's own step (one task, no
    ///   `MASTER_ADDR`) is `Ok(None)`, a single-process run.
    /// * `Ok(None)` when neither is set: a single-process run.
    ///
    /// Errors (kind [`ErrorKind::Config`]) name the variable that is missing or does not parse,
    /// or say what is inconsistent (rank ≥ world size, world size 0, port 0).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let number = |name: &str| -> Result<usize> {
            let value = get(name).ok_or_else(|| config(format!("{name} is not set")))?;
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| config(format!("{name}={value:?} is not a non-negative integer")))
        };
        let (names, launcher) = if TORCHRUN[..2].iter().any(|n| get(n).is_some()) {
            (TORCHRUN, "torchrun")
        } else if get(SLURM[0]).is_some() {
            // A one-task step without a rendezvous address (a batch script's own step, which
            // runs one process) is not a launch.
            if get(SLURM[1]).is_some_and(|n| n.trim() == "1") && get("MASTER_ADDR").is_none() {
                return Ok(None);
            }
            (SLURM, "Slurm")
        } else {
            return Ok(None);
        };
        let [rank_var, world_var, local_var] = names;
        let rank = number(rank_var)?;
        let world_size = number(world_var)?;
        let local_rank = if launcher == "torchrun" && get(local_var).is_none() {
            rank
        } else {
            number(local_var)?
        };
        let master_addr = get("MASTER_ADDR").ok_or_else(|| {
            config(format!(
                "MASTER_ADDR is not set ({launcher} launch: the address of rank 0)"
            ))
        })?;
        let port_text = get("MASTER_PORT").ok_or_else(|| {
            config(format!(
                "MASTER_PORT is not set ({launcher} launch: the port of rank 0's store)"
            ))
        })?;
        let master_port = port_text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                config(format!(
                    "MASTER_PORT={port_text:?} is not a port in 1..=65535"
                ))
            })?;
        if world_size == 0 {
            return Err(config(format!(
                "{world_var}=0: the world needs at least one process"
            )));
        }
        if rank >= world_size {
            return Err(config(format!(
                "{rank_var}={rank} is not below {world_var}={world_size}"
            )));
        }
        if local_rank >= world_size {
            return Err(config(format!(
                "{local_var}={local_rank} is not below {world_var}={world_size}"
            )));
        }
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr: master_addr.trim().to_owned(),
            master_port,
        }))
    }

    /// [`Launch::from_vars`] over a map (for tests and callers that hold the variables).
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Option<Self>> {
        Self::from_vars(|name| vars.get(name).cloned())
    }

    /// The group configuration for this launch.
    pub fn group_config(&self, backend: Backend, timeout: Duration) -> GroupConfig {
        GroupConfig {
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            rank: self.rank,
            world_size: self.world_size,
            backend,
            timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Launch::from_map(&map)
    }

    fn err(vars: &[(&str, &str)]) -> String {
        let e = launch(vars).expect_err("expected an error");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        e.to_string()
    }

    const MASTER: [(&str, &str); 2] = [("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];

    #[test]
    fn nothing_set_is_a_single_process_run() {
        assert_eq!(launch(&[]).unwrap(), None);
        // Master variables alone do not make a launch, nor do empty launcher variables.
        assert_eq!(launch(&MASTER).unwrap(), None);
        assert_eq!(launch(&[("RANK", ""), ("WORLD_SIZE", " ")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", " node0 "),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            l,
            Launch {
                rank: 3,
                world_size: 8,
                local_rank: 1,
                master_addr: "node0".into(),
                master_port: 29500
            }
        );
        let c = l.group_config(Backend::Gloo, Duration::from_secs(5));
        assert_eq!((c.rank, c.world_size, c.master_port), (3, 8, 29500));
        assert_eq!(c.master_addr, "node0");
    }

    #[test]
    fn torchrun_local_rank_defaults_to_rank() {
        let mut vars = vec![("RANK", "1"), ("WORLD_SIZE", "2")];
        vars.extend(MASTER);
        assert_eq!(launch(&vars).unwrap().unwrap().local_rank, 1);
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let mut vars = vec![
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "9"),
            ("SLURM_LOCALID", "1"),
        ];
        vars.extend(MASTER);
        let l = launch(&vars).unwrap().unwrap();
        assert_eq!((l.rank, l.world_size), (0, 2));
    }

    #[test]
    fn slurm_variables() {
        let mut vars = vec![
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
        ];
        vars.extend(MASTER);
        let l = launch(&vars).unwrap().unwrap();
        assert_eq!((l.rank, l.world_size, l.local_rank), (5, 8, 1));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("10.0.0.1", 29500));
    }

    #[test]
    fn a_one_task_slurm_step_without_a_rendezvous_is_one_process() {
        let step = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_LOCALID", "0"),
        ];
        assert_eq!(launch(&step).unwrap(), None);
        // With MASTER_ADDR it is a launch of one (srun -n 1 under a sweep script).
        let mut vars = step.to_vec();
        vars.extend(MASTER);
        assert_eq!(launch(&vars).unwrap().unwrap().world_size, 1);
    }

    #[test]
    fn missing_variables_are_named() {
        assert!(err(&[("RANK", "0")]).contains("WORLD_SIZE is not set"));
        assert!(err(&[("WORLD_SIZE", "2")]).contains("RANK is not set"));
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2")]);
        assert!(e.contains("MASTER_ADDR is not set"), "{e}");
        let e = err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        assert!(e.contains("MASTER_PORT is not set"), "{e}");
        let e = err(&[("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")]);
        assert!(e.contains("SLURM_NTASKS is not set"), "{e}");
        let mut vars = vec![("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")];
        vars.extend(MASTER);
        assert!(err(&vars).contains("SLURM_LOCALID is not set"));
        let e = err(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
        ]);
        assert!(e.contains("MASTER_ADDR is not set (Slurm launch"), "{e}");
    }

    #[test]
    fn unparsable_variables_are_named() {
        let mut vars = vec![("RANK", "one"), ("WORLD_SIZE", "2")];
        vars.extend(MASTER);
        assert!(err(&vars).contains("RANK=\"one\" is not a non-negative integer"));
        let mut vars = vec![("RANK", "0"), ("WORLD_SIZE", "-2")];
        vars.extend(MASTER);
        assert!(err(&vars).contains("WORLD_SIZE=\"-2\""));
        for port in ["0", "65536", "http"] {
            let e = err(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", port),
            ]);
            assert!(e.contains(&format!("MASTER_PORT=\"{port}\"")), "{e}");
        }
        let mut vars = vec![
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "x"),
        ];
        vars.extend(MASTER);
        assert!(err(&vars).contains("SLURM_LOCALID=\"x\""));
    }

    #[test]
    fn inconsistent_values() {
        let mut vars = vec![("RANK", "2"), ("WORLD_SIZE", "2")];
        vars.extend(MASTER);
        assert!(err(&vars).contains("RANK=2 is not below WORLD_SIZE=2"));
        let mut vars = vec![("RANK", "0"), ("WORLD_SIZE", "0")];
        vars.extend(MASTER);
        assert!(err(&vars).contains("WORLD_SIZE=0"));
        let mut vars = vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2")];
        vars.extend(MASTER);
        assert!(err(&vars).contains("LOCAL_RANK=2 is not below WORLD_SIZE=2"));
        let mut vars = vec![
            ("SLURM_PROCID", "4"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
        ];
        vars.extend(MASTER);
        assert!(err(&vars).contains("SLURM_PROCID=4 is not below SLURM_NTASKS=4"));
    }
}
