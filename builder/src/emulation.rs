//! Before any step runs: every platform whose RUN steps will run here
//! either runs natively or has an emulator (binfmt_misc with
//! qemu-user-static, registered by the runtime when it may:
//! [`kiln_runtime::binfmt`]). A platform without one fails the build at
//! once, naming the platform and the emulator, instead of a RUN failing
//! with `exec format error` after the steps before it ran.
//!
//! A RUN step that the build cache will serve runs nothing, so it needs no
//! emulator: a fully cached rebuild of a foreign platform works on a
//! machine without one.

use std::collections::{BTreeMap, BTreeSet};

use kiln_layers::Store;
use kiln_runtime::binfmt::{ensure_emulator, BinfmtError, BinfmtKernel, Support};

use crate::plan::{Plan, StepKind};

/// The platforms (`os/arch[/variant]`) of the plan's needed stages that
/// have a RUN step to run: not served by the cache (`no_cache`, or a stage
/// of `no_cache_stages`, runs them all), each with its architecture.
pub fn platforms_that_run(
    plan: &Plan,
    store: &Store,
    no_cache: bool,
    no_cache_stages: &BTreeSet<usize>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for &index in &plan.order {
        let stage = &plan.stages[index];
        let rerun = no_cache || no_cache_stages.contains(&index);
        let runs = stage.steps.iter().any(|step| {
            matches!(step.kind, StepKind::Run(_))
                && (rerun
                    || step
                        .cache_key
                        .as_ref()
                        .is_none_or(|key| !matches!(store.cache_get(key), Ok(Some(_)))))
        });
        if runs {
            let image = &stage.image;
            let mut platform = format!("{}/{}", image.os, image.architecture);
            if let Some(variant) = &image.variant {
                platform.push('/');
                platform.push_str(variant);
            }
            out.insert(platform, image.architecture.clone());
        }
    }
    out
}

/// Checks that each of `platforms` (from [`platforms_that_run`]) can run
/// here; returns how each does.
pub fn check_emulators(
    kernel: &mut dyn BinfmtKernel,
    platforms: &BTreeMap<String, String>,
) -> Result<Vec<(String, Support)>, BinfmtError> {
    let mut out = Vec::new();
    for (platform, architecture) in platforms {
        let support = ensure_emulator(kernel, platform, architecture)?;
        if let Support::Emulated(handler) = &support {
            let how = if handler.registered_now {
                "registered now"
            } else {
                "registered"
            };
            tracing::info!(
                "{platform}: RUN steps go through binfmt_misc's {} ({}, {how})",
                handler.name,
                handler.interpreter
            );
        }
        out.push((platform.clone(), support));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{compute_cache_keys, plan, BuildOptions, OfflineResolver, RemoteSources};
    use kiln_layers::Platform;

    fn planned(dockerfile: &str, target: &str) -> Plan {
        let ast = kiln_parser::parse(dockerfile, "Dockerfile").unwrap();
        let typed = kiln_parser::instructions::from_ast(&ast).unwrap();
        let options = BuildOptions {
            target_platform: Platform::parse(target).unwrap(),
            build_platform: Platform::parse("linux/amd64").unwrap(),
            ..BuildOptions::default()
        };
        let mut planned = plan(&typed, &options, &OfflineResolver).unwrap();
        compute_cache_keys(&mut planned, None, &RemoteSources::default()).unwrap();
        planned
    }

    #[test]
    fn only_stages_with_a_run_step_to_run_need_their_platform() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let dockerfile = "FROM --platform=$BUILDPLATFORM busybox AS build\n\
                          RUN echo build\n\
                          FROM busybox AS copyonly\n\
                          COPY --from=build / /\n\
                          FROM busybox\n\
                          COPY --from=copyonly / /\n\
                          RUN uname -m\n";
        let plan = planned(dockerfile, "linux/arm64");
        let wanted = platforms_that_run(&plan, &store, false, &BTreeSet::new());
        assert_eq!(
            wanted.into_iter().collect::<Vec<_>>(),
            [
                ("linux/amd64".to_string(), "amd64".to_string()),
                ("linux/arm64".to_string(), "arm64".to_string())
            ]
        );
        // The arm64 RUN served by the cache needs no emulator.
        let run = plan.stages[plan.target]
            .steps
            .iter()
            .find(|s| matches!(s.kind, StepKind::Run(_)))
            .unwrap();
        store
            .cache_put(run.cache_key.as_ref().unwrap(), &Default::default())
            .unwrap();
        let wanted = platforms_that_run(&plan, &store, false, &BTreeSet::new());
        assert_eq!(wanted.keys().collect::<Vec<_>>(), ["linux/amd64"]);
        // Unless the cache is not used for it.
        let wanted = platforms_that_run(&plan, &store, true, &BTreeSet::new());
        assert!(wanted.contains_key("linux/arm64"));
        let wanted = platforms_that_run(&plan, &store, false, &BTreeSet::from([plan.target]));
        assert!(wanted.contains_key("linux/arm64"));
    }
}
