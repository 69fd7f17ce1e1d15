//! A build for several target platforms (`--platform linux/amd64,linux/arm64`):
//! one image per platform, one index over them.
//!
//! Each platform is planned as a single-platform build is
//! ([`Session::plan_for`], with `TARGETPLATFORM` and the rest set for it),
//! then every plan is checked (entitlements, emulators) before any step
//! runs, and the plans are solved in parallel. What the plans share is
//! shared through the cache keys: a `FROM --platform=$BUILDPLATFORM`
//! stage's steps that do not read the target's args have the same key in
//! every plan, so the first solve to reach one runs it and the others take
//! it from the cache ([`SharedSteps`]); its progress is shown once, as
//! BuildKit shows a vertex shared by several platforms once. Step names
//! carry the stage's platform (`[linux/arm64 stage-1 2/3]`).
//!
//! The images then go into one index ([`IndexWriter`]: an OCI image index,
//! or a Docker manifest list with Docker media types), in the order the
//! platforms were given; the index is tagged, written to the outputs that
//! hold several platforms (an OCI layout, per-platform root filesystems)
//! and pushed (each platform's manifest, then the index).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use kiln_layers::compressed::compressed_image;
use kiln_layers::index::{write_attestation_manifest, IndexWriter};
use kiln_layers::{Descriptor, Platform};

use crate::cache::CacheSources;
use crate::export::Output;
use crate::plan::{BuildOptions, Plan, PlanWarning};
use crate::provenance::{self, ProvenanceRequest, SourceInfo};
use crate::session::{BuildError, BuildResult, Planned, Session};
use crate::solve::{BuildBlobs, BuildEvents, BuiltImage, SharedSteps, StepEvent, StepOutcome};

impl<'a> Session<'a> {
    /// Builds for each of `platforms` (two or more, normalized and
    /// distinct) and tags, exports and pushes their index.
    pub fn build_platforms(&self, platforms: &[Platform]) -> Result<BuildResult, BuildError> {
        self.check_requests()?;
        for output in &self.settings.outputs {
            output.check_platforms(platforms)?;
        }
        // Planning reports through `shown`: the Dockerfile and context
        // loads, and warnings, once for every platform.
        let shown = SeenOnce {
            inner: self.events,
            shown: Mutex::new(HashSet::new()),
        };
        let session = Session {
            events: &shown,
            ..*self
        };
        session.build_all(platforms)
    }

    /// [`Session::build_platforms`] once its checks are made.
    fn build_all(&self, platforms: &[Platform]) -> Result<BuildResult, BuildError> {
        let mut plans = Vec::new();
        for platform in platforms {
            let options = BuildOptions {
                target_platform: platform.clone(),
                ..self.settings.options.clone()
            };
            plans.push(self.plan_for(&options, platforms)?);
        }
        let plans: Vec<&Planned<'a>> = plans.iter().collect();
        self.check_before_steps(&plans)?;
        let started = SystemTime::now();
        let cache_from = CacheSources::new(&self.cache.sources, self.events);
        let images = self.solve_all(&plans, &cache_from)?;
        let result = self.finish_index(&plans, &images, started)?;
        let blobs = BuildBlobs {
            sources: &cache_from,
            resolver: &plans[0].resolver,
        };
        self.export_cache(&plans, &images, &blobs)?;
        self.write_files(&result)?;
        Ok(result)
    }

    /// The solved `images` (one per plan, in order) into one index (with
    /// each image's provenance when asked for), tagged, written to the
    /// outputs and pushed; `started` is when the solve began. The caller
    /// exports the cache, then writes the `--iidfile` and metadata file
    /// (`Session::write_files`), as a build without an index does: a
    /// failed cache export leaves neither.
    pub(crate) fn finish_index(
        &self,
        plans: &[&Planned<'a>],
        images: &[BuiltImage],
        started: SystemTime,
    ) -> Result<BuildResult, BuildError> {
        let index = self.write_index(images, plans, started)?;
        let mut result = BuildResult {
            image_id: index.digest.clone(),
            reported: index.clone(),
            built: images[0].clone(),
            pushed: Vec::new(),
            checks: plans[0].checks.findings.clone(),
            index: Some((index.clone(), images.to_vec())),
        };
        self.write_outputs(&mut result, &index, images)?;
        self.push(&mut result)?;
        Ok(result)
    }

    /// Solves every plan, each on a thread of its own; the images in the
    /// plans' order. The first failure is returned (the other solves run
    /// to their end or their own failure).
    fn solve_all(
        &self,
        plans: &[&Planned<'a>],
        cache_from: &CacheSources<'_>,
    ) -> Result<Vec<BuiltImage>, BuildError> {
        let shared = SharedSteps::default();
        let seen = Mutex::new(HashSet::new());
        let results: Vec<Result<BuiltImage, BuildError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = plans
                .iter()
                .enumerate()
                .map(|(ordinal, &planned)| {
                    let events = PlatformEvents::new(self.events, &planned.plan, ordinal, &seen);
                    let shared = &shared;
                    scope.spawn(move || {
                        self.solve_planned(planned, Some(shared), &events, cache_from)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(BuildError::Invalid(
                            "a platform's build thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        results.into_iter().collect()
    }

    /// Writes the index of `images` (their platforms as their configs say)
    /// and tags it (or records it untagged). With `--provenance`, each
    /// image's layers are compressed first (the manifest the attestation
    /// names is the one that leaves the store) and its attestation
    /// manifest follows the images, as BuildKit orders them.
    fn write_index(
        &self,
        images: &[BuiltImage],
        plans: &[&Planned<'a>],
        solve_started: SystemTime,
    ) -> Result<Descriptor, BuildError> {
        let started = Instant::now();
        let settings = self.settings;
        let mut writer = IndexWriter::new(settings.docker_media_types);
        let mut attestations = Vec::new();
        let invocation = provenance::Invocation::new(solve_started);
        for (built, planned) in images.iter().zip(plans) {
            let Some(request) = &settings.provenance else {
                writer.add_image(&built.manifest, &built.platform());
                continue;
            };
            let manifest = compressed_image(
                self.store,
                &built.manifest,
                settings.layer_form,
                self.reporter,
            )?;
            writer.add_image(&manifest, &built.platform());
            attestations.push(self.attestation(request, planned, &manifest, built, &invocation)?);
        }
        for entry in attestations {
            writer.add_entry(entry);
        }
        let annotations = &settings.annotations;
        for (key, value) in crate::annotations::for_index(annotations) {
            writer.annotate(&key, &value);
        }
        let mut index = writer.write(self.store)?;
        index
            .annotations
            .extend(crate::annotations::for_index_descriptor(annotations));
        let tags = self.settings.all_tags();
        if tags.is_empty() && self.settings.records_untagged() {
            self.store.add_untagged(&index)?;
        }
        for tag in &tags {
            self.store.tag(tag, &index)?;
        }
        for name in self.settings.canonical_names(&index.digest) {
            self.store.tag(&name, &index)?;
        }
        // Each entry as the index has it (an attested image's manifest is
        // its compressed one), as BuildKit's export shows them.
        let mut lines: Vec<String> = writer
            .entries()
            .iter()
            .map(|entry| match &entry.platform {
                Some(p) if p.architecture == "unknown" => {
                    format!("exporting attestation manifest {} done", entry.digest)
                }
                Some(p) => format!(
                    "writing manifest {} for {} done",
                    entry.digest,
                    p.normalized()
                ),
                None => format!("writing manifest {} done", entry.digest),
            })
            .collect();
        lines.push(format!("writing manifest list {} done", index.digest));
        lines.extend(tags.iter().map(|t| format!("naming to {t} done")));
        if self.settings.exports_an_image() {
            self.events.internal(
                "exporting to image",
                &lines,
                started.elapsed().as_secs_f64(),
            );
        }
        Ok(index)
    }

    /// The provenance attestation manifest of one platform's image
    /// (`manifest`, as it leaves the store).
    fn attestation(
        &self,
        request: &ProvenanceRequest,
        planned: &Planned<'a>,
        manifest: &Descriptor,
        built: &BuiltImage,
        invocation: &provenance::Invocation,
    ) -> Result<Descriptor, BuildError> {
        let settings = self.settings;
        let source = SourceInfo {
            context_origin: settings.context_origin.clone(),
            context_commit: settings.context_commit.clone(),
            context_dir: settings
                .context_origin
                .is_none()
                .then(|| settings.context_dir.clone()),
            dockerfile_local: settings.dockerfile_local,
            dockerfile_name: settings.dockerfile.file_name(),
            dockerfile_bytes: settings.dockerfile.bytes.clone(),
        };
        let names = settings.image_names();
        let statement = provenance::statement(&provenance::Inputs {
            request,
            store: self.store,
            plan: &planned.plan,
            source: &source,
            build_args: &settings.options.build_args,
            labels: &settings.labels,
            target: settings.options.target.as_deref(),
            network_none: settings.network == kiln_runtime::Network::None,
            names: &names,
            subject: manifest,
            platform: &built.platform(),
            invocation,
            downloads: Some(planned.downloads()),
            layout_images: settings.named_contexts.images(),
        });
        Ok(write_attestation_manifest(
            self.store,
            manifest,
            &[statement],
            settings.oci_artifact,
        )?)
    }

    fn write_outputs(
        &self,
        result: &mut BuildResult,
        index: &Descriptor,
        images: &[BuiltImage],
    ) -> Result<(), BuildError> {
        let settings = self.settings;
        let write = settings.write_settings(self.reporter, self.remote.docker());
        for output in &settings.outputs {
            // One platform's root filesystem (a build with provenance)
            // goes where a single-platform build puts it; under its
            // platform's directory when BUILDKIT_MULTI_PLATFORM asked for
            // an index (BuildKit's frontend returns a platform map then).
            let single =
                images.len() == 1 && !matches!(output, Output::Oci(_)) && !self.index_asked();
            let started = std::time::Instant::now();
            let written = if single {
                output.write(self.store, &images[0], &write)?
            } else {
                output.write_index(self.store, index, images, &write)?
            };
            self.exported(output, started);
            // The last output's descriptor, as in a one-platform build.
            if let Some(written) = written {
                result.reported = written;
            } else if matches!(output, Output::Image { .. }) {
                result.reported = index.clone();
            }
        }
        Ok(())
    }
}

/// Passes the build's events on, showing each internal step and warning
/// once (every platform loads the same Dockerfile and context).
struct SeenOnce<'e> {
    inner: &'e dyn BuildEvents,
    shown: Mutex<HashSet<String>>,
}

impl SeenOnce<'_> {
    fn first(&self, what: String) -> bool {
        self.shown
            .lock()
            .map(|mut shown| shown.insert(what))
            .unwrap_or(true)
    }
}

impl BuildEvents for SeenOnce<'_> {
    fn step_started(&self, step: &StepEvent<'_>) {
        self.inner.step_started(step);
    }

    fn step_done(&self, step: &StepEvent<'_>, outcome: &StepOutcome) {
        self.inner.step_done(step, outcome);
    }

    fn step_output(&self, step: &StepEvent<'_>, line: &str) {
        self.inner.step_output(step, line);
    }

    fn internal(&self, name: &str, lines: &[String], seconds: f64) {
        if self.first(format!("internal {name}")) {
            self.inner.internal(name, lines, seconds);
        }
    }

    fn warning(&self, file: &str, warning: &PlanWarning) {
        if self.first(format!(
            "warning {file}:{:?}: {}",
            warning.line, warning.message
        )) {
            self.inner.warning(file, warning);
        }
    }
}

/// One platform's solve as the build's events see it: each step named
/// with its stage's platform, and a step another platform's solve already
/// showed (the same cache key: the same step) left out. Stage indexes are
/// made distinct across platforms (`ordinal × stages + index`): progress
/// tells steps apart by stage index and number.
struct PlatformEvents<'e> {
    inner: &'e dyn BuildEvents,
    plan: &'e Plan,
    /// The platform's place in the build.
    ordinal: usize,
    /// The identities of the steps shown, shared by every platform's solve.
    seen: &'e Mutex<HashSet<String>>,
    /// This solve's steps left out, by (stage, number).
    hidden: Mutex<HashSet<(usize, usize)>>,
    /// Each stage's label: its platform, then its name.
    labels: Vec<String>,
}

impl<'e> PlatformEvents<'e> {
    fn new(
        inner: &'e dyn BuildEvents,
        plan: &'e Plan,
        ordinal: usize,
        seen: &'e Mutex<HashSet<String>>,
    ) -> PlatformEvents<'e> {
        let labels = plan
            .stages
            .iter()
            .map(|stage| {
                let image = &stage.image;
                let platform = Platform {
                    architecture: image.architecture.clone(),
                    os: image.os.clone(),
                    os_version: None,
                    os_features: None,
                    variant: image.variant.clone(),
                }
                .normalized();
                let name = match &stage.name {
                    Some(n) => n.clone(),
                    None if plan.stages.len() > 1 => format!("stage-{}", stage.index),
                    None => String::new(),
                };
                format!("{platform} {name}").trim_end().to_string()
            })
            .collect();
        PlatformEvents {
            inner,
            plan,
            ordinal,
            seen,
            hidden: Mutex::new(HashSet::new()),
            labels,
        }
    }

    /// What makes a step the same in two platforms' solves: its cache key,
    /// or (FROM) its stage's platform and base.
    fn identity(&self, step: &StepEvent<'_>) -> String {
        let key = self
            .plan
            .stages
            .get(step.stage_index)
            .and_then(|s| s.steps.get(step.number.wrapping_sub(2)))
            .and_then(|s| s.cache_key.as_ref());
        match key {
            Some(key) if step.number > 1 => key.to_string(),
            _ => format!("{} {}", self.label(step), step.instruction),
        }
    }

    fn label<'s>(&'s self, step: &StepEvent<'s>) -> &'s str {
        self.labels
            .get(step.stage_index)
            .map(String::as_str)
            .unwrap_or(step.stage)
    }

    fn hidden(&self, step: &StepEvent<'_>) -> bool {
        self.hidden
            .lock()
            .map(|h| h.contains(&(step.stage_index, step.number)))
            .unwrap_or(false)
    }

    fn relabeled<'s>(&'s self, step: &StepEvent<'s>) -> StepEvent<'s> {
        StepEvent {
            stage: self.label(step),
            stage_index: self.ordinal * self.plan.stages.len() + step.stage_index,
            ..step.clone()
        }
    }
}

impl BuildEvents for PlatformEvents<'_> {
    fn step_started(&self, step: &StepEvent<'_>) {
        let first = self
            .seen
            .lock()
            .map(|mut seen| seen.insert(self.identity(step)))
            .unwrap_or(true);
        if !first {
            if let Ok(mut hidden) = self.hidden.lock() {
                hidden.insert((step.stage_index, step.number));
            }
            return;
        }
        self.inner.step_started(&self.relabeled(step));
    }

    fn step_done(&self, step: &StepEvent<'_>, outcome: &StepOutcome) {
        // A failure is shown whoever showed the step first.
        if !self.hidden(step) || matches!(outcome, StepOutcome::Failed(_)) {
            self.inner.step_done(&self.relabeled(step), outcome);
        }
    }

    fn step_output(&self, step: &StepEvent<'_>, line: &str) {
        if !self.hidden(step) {
            self.inner.step_output(&self.relabeled(step), line);
        }
    }

    fn internal(&self, name: &str, lines: &[String], seconds: f64) {
        self.inner.internal(name, lines, seconds);
    }

    fn warning(&self, file: &str, warning: &PlanWarning) {
        self.inner.warning(file, warning);
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::{compute_cache_keys, plan, BuildOptions, OfflineResolver, RemoteSources};
    use kiln_layers::{Digest, Platform};

    /// Each stage's step keys for one target platform (the build platform
    /// amd64).
    fn keys(dockerfile: &str, target: &str) -> Vec<Vec<Digest>> {
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
            .stages
            .iter()
            .map(|s| {
                s.steps
                    .iter()
                    .map(|st| st.cache_key.clone().unwrap())
                    .collect()
            })
            .collect()
    }

    /// Sharing falls out of the keys: a build-platform stage's steps have
    /// the same key for every target until one reads a TARGET* arg; the
    /// target's stages differ from their base on.
    #[test]
    fn a_build_platform_stage_has_the_same_keys_for_every_target() {
        let dockerfile = "FROM --platform=$BUILDPLATFORM busybox AS build\n\
                          RUN echo compile\n\
                          WORKDIR /src\n\
                          ARG TARGETARCH\n\
                          RUN echo $TARGETARCH > /arch\n\
                          FROM busybox\n\
                          COPY --from=build /arch /arch\n";
        let amd64 = keys(dockerfile, "linux/amd64");
        let arm64 = keys(dockerfile, "linux/arm64");
        let armv7 = keys(dockerfile, "linux/arm/v7");
        assert_eq!(amd64[0][..2], arm64[0][..2]);
        assert_eq!(arm64[0][..2], armv7[0][..2]);
        assert_ne!(amd64[0][2], arm64[0][2], "the step reading TARGETARCH");
        assert_ne!(arm64[0][2], armv7[0][2]);
        assert_ne!(amd64[1], arm64[1], "the target's stage");
    }
}
