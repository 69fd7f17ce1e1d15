//! The scheduler: each needed stage on a thread of its own, started as soon
//! as the stages it depends on are done.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use crate::plan::Plan;

use super::*;

/// Runs `run` for each of the plan's needed stages but those in `skip`
/// (taken as done), on its own thread, as soon as every stage it depends
/// on has finished (a ready queue: a stage never waits for unrelated slower
/// ones). After the first failure no new stage starts; the ones running
/// are waited for and that error returned.
pub(super) fn run_stages_when_ready<F>(
    plan: &Plan,
    skip: &BTreeSet<usize>,
    run: F,
) -> Result<(), SolveError>
where
    F: Fn(usize) -> Result<(), SolveError> + Sync,
{
    let (finished_tx, finished_rx) = mpsc::channel::<(usize, Result<(), SolveError>)>();
    let mut pending: Vec<usize> = plan
        .order
        .iter()
        .copied()
        .filter(|s| !skip.contains(s))
        .collect();
    let mut done: BTreeSet<usize> = skip.clone();
    let mut running = 0usize;
    let mut first_error: Option<SolveError> = None;
    std::thread::scope(|scope| {
        loop {
            if first_error.is_none() {
                let (ready, waiting): (Vec<usize>, Vec<usize>) = pending
                    .iter()
                    .partition(|s| plan.stages[**s].deps.iter().all(|d| done.contains(d)));
                pending = waiting;
                for index in ready {
                    running += 1;
                    let finished_tx = finished_tx.clone();
                    let run = &run;
                    scope.spawn(move || {
                        // A panic must still report, or the loop below would
                        // wait for this stage forever.
                        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run(index)))
                            .unwrap_or_else(|_| {
                                Err(SolveError::Step {
                                    line: plan.stages[index].line,
                                    instruction: String::new(),
                                    message: "a build thread panicked".into(),
                                })
                            });
                        let _ = finished_tx.send((index, result));
                    });
                }
            }
            if running == 0 {
                break;
            }
            let Ok((index, result)) = finished_rx.recv() else {
                break;
            };
            running -= 1;
            match result {
                Ok(()) => {
                    done.insert(index);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    match pending.first() {
        Some(&stuck) => Err(SolveError::StageMissing(stuck)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod scheduler_tests {
    use super::*;
    use crate::plan::{plan, BuildOptions, OfflineResolver};
    use std::time::Duration;

    fn plan_of(dockerfile: &str) -> Plan {
        let ast = kiln_parser::parse(dockerfile, "Dockerfile").unwrap();
        let typed = kiln_parser::instructions::from_ast(&ast).unwrap();
        plan(&typed, &BuildOptions::default(), &OfflineResolver).unwrap()
    }

    // `slow` and `quick` have no dependencies; `after` needs only `quick`.
    const DOCKERFILE: &str = "FROM scratch AS slow\n\
        FROM scratch AS quick\n\
        FROM scratch AS after\n\
        COPY --from=quick / /\n\
        FROM scratch\n\
        COPY --from=slow / /\n\
        COPY --from=after / /\n";

    #[test]
    fn waves_group_stages_by_dependency_depth() {
        let planned = plan_of(DOCKERFILE);
        assert_eq!(planned.waves(), vec![vec![0, 1], vec![2], vec![3]]);
    }

    /// `slow` finishes only once `after` has started: a scheduler that waits
    /// for the whole first wave (`slow` and `quick`) before starting `after`
    /// can never finish `slow`, which then reports a failure.
    #[test]
    fn a_stage_starts_when_its_own_dependencies_are_done() {
        let planned = plan_of(DOCKERFILE);
        let (after_started_tx, after_started_rx) = mpsc::channel::<()>();
        let after_started_rx = Mutex::new(after_started_rx);
        let started = Mutex::new(Vec::new());
        run_stages_when_ready(&planned, &BTreeSet::new(), |index| {
            started.lock().unwrap().push(index);
            match index {
                0 => after_started_rx
                    .lock()
                    .unwrap()
                    // A hang guard, not a timing assertion.
                    .recv_timeout(Duration::from_secs(120))
                    .map_err(|_| SolveError::StageMissing(2)),
                2 => {
                    after_started_tx.send(()).unwrap();
                    Ok(())
                }
                _ => Ok(()),
            }
        })
        .unwrap();
        let started = started.into_inner().unwrap();
        assert_eq!(started.len(), 4);
        assert_eq!(started.last(), Some(&3), "the target starts last");
    }

    #[test]
    fn the_first_failure_stops_later_stages() {
        let planned = plan_of(DOCKERFILE);
        let started = Mutex::new(Vec::new());
        let result = run_stages_when_ready(&planned, &BTreeSet::new(), |index| {
            started.lock().unwrap().push(index);
            if index == 1 {
                return Err(SolveError::StageMissing(1));
            }
            Ok(())
        });
        assert!(matches!(result, Err(SolveError::StageMissing(1))));
        let started = started.into_inner().unwrap();
        assert!(!started.contains(&2) && !started.contains(&3));
    }
}
