//! Typed results: the untyped core's [`Answers`] decoded as the task's result type,
//! and where they go. A [`Batch`] is what a [`Results`](super::backend::Results) or a
//! [`BatchSink`] gives a handle; [`decode_answers`] makes one out of what a worker
//! sent, for every pool whose workers answer over a wire.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::core::{Answers, Indices, Sink};
use crate::error::{Error, Result};
use crate::failure;

/// Where a handle gathers a job's typed results (see [`Sink`]; a thread pool feeds
/// one directly, a pool over a wire through [`decoding`]).
pub trait BatchSink<R>: Send + Sync {
    /// Some results, in completion order.
    fn add(&self, batch: Batch<R>);
    /// The job is over without answering every call (a thread pool terminated with
    /// calls queued).
    fn end(&self);
}

/// A [`Sink`] that decodes answers as `R` for a [`BatchSink`].
pub(super) fn decoding<R: DeserializeOwned + 'static>(
    sink: Arc<dyn BatchSink<R>>,
) -> Arc<dyn Sink> {
    struct Decoding<R>(Arc<dyn BatchSink<R>>);
    impl<R: DeserializeOwned> Sink for Decoding<R> {
        fn answers(&self, answers: Answers) {
            // A `Deserialize` of the user's that panics must not take the pool's
            // driving thread with it: the calls it was decoding answer that panic.
            let indices = answers.indices();
            let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decode_answers::<R>(answers)
            }))
            .unwrap_or_else(|payload| {
                let why = crate::error::panic_message(payload.as_ref());
                Batch::failed(
                    indices
                        .into_iter()
                        .map(|i| {
                            let e = Error::Decode {
                                type_name: std::any::type_name::<R>().to_owned(),
                                reason: format!("its Deserialize panicked: {why}"),
                            };
                            (i, e)
                        })
                        .collect(),
                )
            });
            self.0.add(batch);
        }
    }
    Arc::new(Decoding(sink))
}

/// Some results of a job: values and failures apart, so that a batch of many
/// small values is not a vector of large `Result`s, and the calls answered with a
/// value as runs of call numbers ([`Indices`]), so that a chunk's values can be
/// moved as one block into the caller's result.
pub struct Batch<R> {
    /// The calls answered with a value, in the order of `values`.
    pub(super) at: Indices,
    pub(super) values: Vec<R>,
    pub(super) errors: Vec<(usize, Error)>,
}

impl<R> Batch<R> {
    /// A batch of errors only.
    fn failed(errors: Vec<(usize, Error)>) -> Self {
        Batch {
            at: Indices::new(),
            values: Vec::new(),
            errors,
        }
    }

    /// An empty batch with room for `n` values.
    pub(super) fn with_capacity(n: usize) -> Self {
        Batch {
            at: Indices::new(),
            values: Vec::with_capacity(n),
            errors: Vec::new(),
        }
    }

    /// Call `index` answered `result` (calls pushed in order of their numbers keep
    /// `at` one run).
    pub(super) fn push(&mut self, index: usize, result: Result<R>) {
        match result {
            Ok(v) => {
                self.at.push(index);
                self.values.push(v);
            }
            Err(e) => self.errors.push((index, e)),
        }
    }

    /// Results in the batch.
    pub fn len(&self) -> usize {
        self.values.len() + self.errors.len()
    }

    /// Whether the batch holds no result.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values with their call numbers.
    fn ok(
        at: Indices,
        values: Vec<R>,
    ) -> std::iter::Zip<<Indices as IntoIterator>::IntoIter, std::vec::IntoIter<R>> {
        at.into_iter().zip(values)
    }
}

impl<R> IntoIterator for Batch<R> {
    type Item = (usize, Result<R>);
    type IntoIter = std::iter::Chain<
        std::iter::Map<
            std::iter::Zip<<Indices as IntoIterator>::IntoIter, std::vec::IntoIter<R>>,
            fn((usize, R)) -> (usize, Result<R>),
        >,
        std::iter::Map<
            std::vec::IntoIter<(usize, Error)>,
            fn((usize, Error)) -> (usize, Result<R>),
        >,
    >;

    fn into_iter(self) -> Self::IntoIter {
        let ok: fn((usize, R)) -> (usize, Result<R>) = |(i, v)| (i, Ok(v));
        let err: fn((usize, Error)) -> (usize, Result<R>) = |(i, e)| (i, Err(e));
        Batch::ok(self.at, self.values)
            .map(ok)
            .chain(self.errors.into_iter().map(err))
    }
}

/// Decodes answers as `R`. The bytes came from another process: a malformed batch
/// gives errors, never a panic.
pub(super) fn decode_answers<R: DeserializeOwned>(answers: Answers) -> Batch<R> {
    match answers {
        Answers::Failed(errors) => Batch::failed(errors),
        Answers::Values {
            pid,
            indices,
            failures,
            data,
            fds,
            host,
        } => crate::wire::fds::provide(fds, || {
            let mut values = crate::wire::Values::new(data.bytes());
            if failures.is_empty() {
                // Plain data, every call answered: the chunk's values in one copy.
                let mut out = Vec::new();
                match values.next_plain_run::<R>(indices.len(), &mut out) {
                    Some(Ok(())) => {
                        return Batch {
                            at: indices,
                            values: out,
                            errors: Vec::new(),
                        };
                    }
                    // Which value is wrong, the value-by-value reading below says.
                    Some(Err(_)) => values = crate::wire::Values::new(data.bytes()),
                    None => {}
                }
            }
            let mut out = Batch {
                at: Indices::new(),
                values: Vec::with_capacity(indices.len() - failures.len().min(indices.len())),
                errors: Vec::new(),
            };
            let mut failures = failures.into_iter().peekable();
            let mut broken: Option<String> = None;
            for (k, index) in indices.into_iter().enumerate() {
                if let Some((_, f)) = failures.next_if(|(at, _)| *at as usize == k) {
                    let e = failure::failure_error(f, pid, index);
                    let e = match &host {
                        Some(h) => Error::OnNode {
                            host: h.to_string(),
                            error: Box::new(e),
                        },
                        None => e,
                    };
                    out.errors.push((index, e));
                } else if let Some(why) = &broken {
                    let detail = why.clone();
                    out.errors.push((index, Error::Protocol { pid, detail }));
                } else {
                    let next = values.next_plain::<R>();
                    match next.unwrap_or_else(|| values.next::<R>()) {
                        Ok(v) => {
                            out.at.push(index);
                            out.values.push(v);
                        }
                        Err(e) => {
                            // Values are self-delimiting: after one that does not
                            // decode, the rest of the batch cannot be found.
                            broken = Some(format!("a result batch that breaks off: {e}"));
                            out.errors.push((index, e));
                        }
                    }
                }
            }
            out
        }),
    }
}

