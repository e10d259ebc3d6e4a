//! Running under `mpirun`: data-parallel training and sharded evaluation.
//!
//! A command calls [`Job::start`] once. Outside a launcher it is rank 0 of 1 and nothing
//! changes. Under `mpirun -np N` in a build with the cargo feature `mpi`, MPI is initialised
//! (and finalised when the [`Job`] is dropped), and [`Place`] gives the rank, the size, the
//! gradient reducer that `saddle_train::Trainer` plugs into its step, and the few collectives
//! the commands need. A build without the feature refuses to run as one of several ranks
//! instead of letting N copies train alone and overwrite each other's files.
//!
//! **Fixed order.** Sums are never left to `MPI_Allreduce` (whose order is the library's
//! choice and may differ with the message size, the rank count or the transport): each rank
//! owns a slice of the buffer, receives that slice from every rank (`MPI_Alltoallv`), folds the
//! shares in rank order with `saddle_train::comm::sum_in_order` (the function the one-process
//! `grad_shards = N` step uses), and the folded slices are gathered back (`MPI_Allgatherv`).
//! That moves `2·(N−1)/N` times the buffer per rank, as a ring all-reduce does.
//!
//! **Failures.** MPI errors are fatal (the default error handler ends the job), a rank that
//! dies ends the job through the launcher, and a rank that waits in a collective for longer than
//! `SADDLE_MPI_TIMEOUT` seconds (default 600) prints which rank gave up while doing what and
//! exits, which ends the job too: no rank hangs past the timeout.

use anyhow::Result;
use saddle_train::GradientReducer;

/// Environment variables that launchers set for each rank: the world size (Open MPI's
/// `mpirun`; MPICH's, Intel MPI's and Slurm's PMI) and the rank (the same, and PMIx launchers:
/// Open MPI 5, `srun --mpi=pmix`).
const SIZE_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
const RANK_VARS: &[&str] = &["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];

fn env_number(vars: &[&str]) -> Option<usize> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// What a launcher announced to this process: `Some((size, rank))`, either of which may be
/// unknown, or `None` outside a launcher.
pub fn launched() -> Option<(Option<usize>, Option<usize>)> {
    let (size, rank) = (env_number(SIZE_VARS), env_number(RANK_VARS));
    (size.is_some() || rank.is_some()).then_some((size, rank))
}

/// This process's place in the job: rank `rank` of `size` (0 of 1 outside a launcher).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// This rank.
    pub rank: usize,
    /// The number of ranks.
    pub size: usize,
}

/// The MPI environment of one command; finalised when dropped.
#[derive(Debug)]
pub struct Job {
    place: Place,
    #[cfg(feature = "mpi")]
    _universe: Option<UniverseGuard>,
}

#[cfg(feature = "mpi")]
struct UniverseGuard(#[allow(dead_code)] mpi::environment::Universe);

#[cfg(feature = "mpi")]
impl std::fmt::Debug for UniverseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Universe")
    }
}

impl Job {
    /// Joins the MPI job this process was launched in, or stands alone.
    ///
    /// # Errors
    /// Launched as one of several ranks by a build without the `mpi` feature; MPI that cannot
    /// be initialised with the threading the commands need.
    pub fn start() -> Result<Job> {
        let launched = launched();
        #[cfg(not(feature = "mpi"))]
        {
            if let Some((size, rank)) = launched {
                if size.unwrap_or(1) > 1 || rank.unwrap_or(0) > 0 {
                    let of = size.map_or("several".to_string(), |n| n.to_string());
                    anyhow::bail!(
                        "started as one of {of} MPI ranks, but this saddle was built without \
                         MPI: rebuild it with `cargo build --release -p saddle-cli --features \
                         mpi` (each rank would otherwise run alone and write the same files)"
                    );
                }
            }
            Ok(Job {
                place: Place { rank: 0, size: 1 },
            })
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::topology::Communicator;
            if launched.is_none() {
                return Ok(Job {
                    place: Place { rank: 0, size: 1 },
                    _universe: None,
                });
            }
            // The commands run on a worker thread of their pool, one MPI call at a time.
            let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
                .ok_or_else(|| {
                    anyhow::anyhow!("MPI is already initialised (or finalised) in this process")
                })?;
            if !matches!(level, mpi::Threading::Serialized | mpi::Threading::Multiple) {
                anyhow::bail!(
                    "this MPI library offers threading level {level:?}; saddle needs Serialized"
                );
            }
            let world = universe.world();
            let place = Place {
                rank: world.rank() as usize,
                size: world.size() as usize,
            };
            watchdog::start(place);
            Ok(Job {
                place,
                _universe: Some(UniverseGuard(universe)),
            })
        }
    }

    /// This process's place.
    pub fn place(&self) -> Place {
        self.place
    }
}

impl Place {
    /// Whether this is rank 0, the one that prints and writes files.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// The gradient reducer of this job's ranks.
    pub fn reducer(&self) -> Box<dyn GradientReducer> {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            return Box::new(reduce::MpiReducer { place: *self });
        }
        Box::new(saddle_train::SingleProcess)
    }

    /// Sums `buf` across the ranks in rank order (see the module's documentation); every rank
    /// ends with the same bits.
    ///
    /// # Errors
    /// A buffer longer than MPI's counts allow.
    pub fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        #[cfg(feature = "mpi")]
        reduce::fold_in_rank_order(*self, buf, "gathering results")?;
        #[cfg(not(feature = "mpi"))]
        let _ = buf;
        Ok(())
    }

    /// Rank 0's bytes, on every rank: rank 0 passes `Ok(bytes)` (or the error that stopped it
    /// from reading them, which every rank then reports), the others anything.
    ///
    /// # Errors
    /// Rank 0's error, as `what` failed on rank 0.
    pub fn broadcast(&self, what: &str, mine: Result<Vec<u8>>) -> Result<Vec<u8>> {
        if self.size == 1 {
            return mine;
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::{Communicator, Root};
            let world = mpi::topology::SimpleCommunicator::world();
            let root = world.process_at_rank(0);
            let mut len: i64 = match (&mine, self.is_root()) {
                (Ok(b), true) => b.len() as i64,
                _ => -1,
            };
            watchdog::guarded(what, || root.broadcast_into(&mut len));
            if len < 0 {
                return match (mine, self.is_root()) {
                    (Err(e), true) => Err(e),
                    _ => Err(anyhow::anyhow!("{what} failed on rank 0")),
                };
            }
            let mut bytes = match mine {
                Ok(b) if self.is_root() => b,
                _ => vec![0u8; len as usize],
            };
            watchdog::guarded(what, || root.broadcast_into(&mut bytes[..]));
            Ok(bytes)
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = what;
            mine
        }
    }

    /// Ends the whole job after rank `self.rank` printed why (a rank that returns an error alone
    /// would leave the others waiting for it).
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            use mpi::traits::Communicator;
            mpi::topology::SimpleCommunicator::world().abort(code);
        }
        std::process::exit(code)
    }
}

#[cfg(feature = "mpi")]
mod reduce {
    use mpi::datatype::{Partition, PartitionMut};
    use mpi::traits::CommunicatorCollectives;
    use mpi::Count;
    use saddle_train::comm::{shard_rows, sum_in_order};
    use saddle_train::{CommError, GradientReducer};

    use super::{watchdog, Place};

    /// The gradient reducer of an MPI job.
    #[derive(Debug)]
    pub struct MpiReducer {
        pub place: Place,
    }

    impl GradientReducer for MpiReducer {
        fn rank(&self) -> usize {
            self.place.rank
        }

        fn size(&self) -> usize {
            self.place.size
        }

        fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
            fold_in_rank_order(self.place, buf, "reducing gradients")
        }
    }

    /// Rank `r` folds slice `r` of every rank's buffer in rank order, then every rank gathers
    /// every folded slice.
    pub fn fold_in_rank_order(place: Place, buf: &mut [f32], what: &str) -> Result<(), CommError> {
        let (r, n, len) = (place.rank, place.size, buf.len());
        if Count::try_from(len).is_err() {
            return Err(CommError(format!(
                "{len} values are more than one MPI message holds"
            )));
        }
        let slices: Vec<std::ops::Range<usize>> = (0..n).map(|q| shard_rows(len, n, q)).collect();
        let counts: Vec<Count> = slices.iter().map(|s| s.len() as Count).collect();
        let displs: Vec<Count> = slices.iter().map(|s| s.start as Count).collect();
        let mine = slices[r].len();
        let mut shares = vec![0.0f32; mine * n];
        let world = mpi::topology::SimpleCommunicator::world();
        {
            let send = Partition::new(&buf[..], &counts[..], &displs[..]);
            let from: Vec<Count> = (0..n).map(|q| (q * mine) as Count).collect();
            let mut recv = PartitionMut::new(&mut shares[..], vec![mine as Count; n], &from[..]);
            watchdog::guarded(what, || world.all_to_all_varcount_into(&send, &mut recv));
        }
        let mut folded = vec![0.0f32; mine];
        if mine > 0 {
            let parts: Vec<&[f32]> = shares.chunks(mine).collect();
            sum_in_order(&parts, &mut folded);
        }
        let mut all = PartitionMut::new(buf, &counts[..], &displs[..]);
        watchdog::guarded(what, || {
            world.all_gather_varcount_into(&folded[..], &mut all)
        });
        Ok(())
    }
}

/// Ends a rank that waits in a collective for longer than `SADDLE_MPI_TIMEOUT` seconds.
#[cfg(feature = "mpi")]
mod watchdog {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::Place;

    /// When the current wait began (milliseconds since the epoch; 0: not waiting).
    static SINCE: AtomicU64 = AtomicU64::new(0);
    static WHAT: Mutex<String> = Mutex::new(String::new());

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1)
            .max(1)
    }

    /// The timeout in seconds: `SADDLE_MPI_TIMEOUT`, default 600.
    pub fn timeout_secs() -> f64 {
        std::env::var("SADDLE_MPI_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(600.0)
    }

    pub fn start(place: Place) {
        let limit = timeout_secs();
        let spawned = std::thread::Builder::new()
            .name("saddle-mpi-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                let since = SINCE.load(Ordering::Relaxed);
                if since != 0 && (now_ms().saturating_sub(since) as f64) > limit * 1000.0 {
                    let what = WHAT.lock().map(|w| w.clone()).unwrap_or_default();
                    eprintln!(
                        "saddle: error: rank {} of {}: no answer from the other ranks for {limit} \
                         s while {what}: a rank died or hangs (SADDLE_MPI_TIMEOUT sets the \
                         limit); ending the job",
                        place.rank, place.size
                    );
                    std::process::exit(3);
                }
            });
        if let Err(e) = spawned {
            eprintln!(
                "saddle: warning: no MPI watchdog thread ({e}); a hung rank is not timed out"
            );
        }
    }

    /// Runs the collective `f`, timed by the watchdog.
    pub fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> T {
        if let Ok(mut w) = WHAT.lock() {
            w.clear();
            w.push_str(what);
        }
        SINCE.store(now_ms(), Ordering::Relaxed);
        let out = f();
        SINCE.store(0, Ordering::Relaxed);
        out
    }
}
