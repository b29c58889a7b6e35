//! Typed results: the untyped core's [`Answers`] decoded as the task's result type,
//! and where they go. A [`Batch`] is what a [`Results`](super::backend::Results) or a
//! [`BatchSink`] gives a handle; [`decode_answers`] makes one out of what a worker
//! sent, for every pool whose workers answer over a wire.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::core::{Answers, Indices, Sink};
use crate::error::{Error, Result};
use crate::failure;
use crate::wire::values::Received;

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
    values: Values<R>,
    pub(super) errors: Vec<(usize, Error)>,
}

/// The values of a [`Batch`], one for each call of its `at`.
pub(super) enum Values<R> {
    Decoded(Vec<R>),
    /// Plain data (`sys::plain`) as the bytes that came, already checked to hold
    /// `at.len()` valid values: a `map` copies them once, straight into its result
    /// ([`Ordered`](super::ordered::Ordered)), with no vector of its own per batch
    /// (fresh memory, whose every page faults, for each chunk of a program's first
    /// `map`).
    Plain(Received),
}

impl<R> Values<R> {
    /// The values as a vector of `n`.
    pub(super) fn into_vec(self, n: usize) -> Vec<R> {
        match self {
            Values::Decoded(v) => v,
            Values::Plain(data) => {
                let mut out = Vec::new();
                match crate::sys::plain::read_run::<R>(&mut data.bytes(), n, &mut out) {
                    Some(Ok(())) => out,
                    // Checked when the batch was made: cannot happen.
                    _ => Vec::new(),
                }
            }
        }
    }
}

impl<R> Batch<R> {
    /// A batch of errors only.
    fn failed(errors: Vec<(usize, Error)>) -> Self {
        Batch {
            at: Indices::new(),
            values: Values::Decoded(Vec::new()),
            errors,
        }
    }

    /// An empty batch with room for `n` values.
    pub(super) fn with_capacity(n: usize) -> Self {
        Batch {
            at: Indices::new(),
            values: Values::Decoded(Vec::with_capacity(n)),
            errors: Vec::new(),
        }
    }

    /// Call `index` answered `result` (calls pushed in order of their numbers keep
    /// `at` one run).
    pub(super) fn push(&mut self, index: usize, result: Result<R>) {
        match result {
            Ok(v) => {
                if let Values::Plain(_) = self.values {
                    let plain = std::mem::replace(&mut self.values, Values::Decoded(Vec::new()));
                    self.values = Values::Decoded(plain.into_vec(self.at.len()));
                }
                if let Values::Decoded(values) = &mut self.values {
                    self.at.push(index);
                    values.push(v);
                }
            }
            Err(e) => self.errors.push((index, e)),
        }
    }

    /// Results in the batch.
    pub fn len(&self) -> usize {
        self.at.len() + self.errors.len()
    }

    /// Whether the batch holds no result.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its parts: the calls answered with a value, the values, the failed calls.
    pub(super) fn into_parts(self) -> (Indices, Values<R>, Vec<(usize, Error)>) {
        (self.at, self.values, self.errors)
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
        let values = self.values.into_vec(self.at.len());
        self.at
            .into_iter()
            .zip(values)
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
            let plain = || crate::sys::plain::check_run::<R>(data.bytes(), indices.len());
            if failures.is_empty() && plain().is_some_and(|checked| checked.is_ok()) {
                // Plain data, every call answered: the bytes go as they are to where
                // the values are wanted (see `Values::Plain`). Which value is wrong, if
                // one is, the value-by-value reading below says.
                return Batch {
                    at: indices,
                    values: Values::Plain(data),
                    errors: Vec::new(),
                };
            }
            let mut values = crate::wire::Values::new(data.bytes());
            let mut out =
                Batch::with_capacity(indices.len() - failures.len().min(indices.len()));
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
                        Ok(v) => out.push(index, Ok(v)),
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


#[cfg(test)]
mod tests {
    use super::*;

    fn answers(indices: &[usize], bytes: Vec<u8>) -> Answers {
        Answers::Values {
            pid: 1,
            indices: indices.iter().copied().collect(),
            failures: Vec::new(),
            data: Received::Inline(bytes, 0),
            fds: Vec::new(),
            host: None,
        }
    }

    #[test]
    fn plain_results_stay_bytes_until_placed_and_iterate_as_values() {
        let bytes = crate::sys::plain::slice_bytes(&[4u32, 5, 6]).unwrap().to_vec();
        let batch = decode_answers::<u32>(answers(&[7, 8, 9], bytes));
        assert!(matches!(batch.values, Values::Plain(_)));
        assert_eq!(batch.len(), 3);
        let got: Vec<(usize, u32)> = batch.into_iter().map(|(i, r)| (i, r.unwrap())).collect();
        assert_eq!(got, [(7, 4), (8, 5), (9, 6)]);
    }

    #[test]
    fn a_hostile_plain_batch_answers_errors_not_values() {
        // A bool that is 2: the calls from it on fail to decode; the one before keeps
        // its value.
        let batch = decode_answers::<bool>(answers(&[0, 1, 2], vec![1, 2, 0]));
        let got: Vec<(usize, bool)> = batch.into_iter().map(|(i, r)| (i, r.is_ok())).collect();
        assert_eq!(got, [(0, true), (1, false), (2, false)]);
        // Too few bytes for the calls said.
        let batch = decode_answers::<u64>(answers(&[0, 1], vec![0; 12]));
        assert_eq!(batch.errors.len(), 1);
        assert_eq!(batch.at.len(), 1);
    }
}
