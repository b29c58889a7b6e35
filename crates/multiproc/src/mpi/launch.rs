//! Whether this process was started by an MPI launcher, and as which rank.
//!
//! Launchers publish each process's rank in its environment before MPI is initialized,
//! which lets [`crate::init`] decide what a process is without touching MPI: Open MPI's
//! `mpirun` sets `OMPI_COMM_WORLD_RANK`, PMIx launchers (Open MPI 5, Slurm's
//! `srun --mpi=pmix`) set `PMIX_RANK`, PMI launchers (MPICH's Hydra, `srun --mpi=pmi2`)
//! set `PMI_RANK`.

/// The variables checked, in order.
const RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];

/// This process's rank as its launcher announced it, or `None` when no launcher
/// started it (a plain `./app`).
pub(crate) fn launcher_rank() -> Option<usize> {
    RANK_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}
