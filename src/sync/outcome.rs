//! How one run of a job ends, shared by the task modules and the runner.

use crate::model::job::Counts;
use crate::store::DbError;
use crate::strava::error::StravaError;

/// How a run of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finished.
    Done(Counts),
    /// Progress made and more to do: back to the queue, due now.
    More(Counts),
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Strava(#[from] StravaError),
    #[error(transparent)]
    Db(#[from] DbError),
}
