//! `kiln explain --image REF`, `--pod FILE.yaml [--container NAME]` and
//! `--compose FILE [--service NAME]`: what an image runs, plainly or
//! where a Kubernetes manifest or a Compose file runs it. The image comes
//! from the store (its layers then show what entrypoint scripts do), else
//! its config alone from the registry.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_builder::explain::compose;
use kiln_builder::explain::image::{explain_image, find_base, ImageSubject};
use kiln_builder::explain::kube;
use kiln_builder::explain::launch::Overrides;
use kiln_builder::explain::pid1::ImageFiles;
use kiln_builder::explain::{render, Explanation, Subject};
use kiln_builder::image_layers::StoreFiles;
use kiln_builder::plan::ImageLookup;
use kiln_layers::oci::ImageConfig;
use kiln_layers::{Image, Platform, Reference, Store};

use crate::cmd::check::{write_stdout, OutputFormat, RegistryConfigs};
use crate::cmd::registry::RegistryArgs;
use crate::settings::GlobalSettings;

/// What to explain.
pub(crate) enum Target {
    Image(String),
    Pod {
        file: PathBuf,
        container: Option<String>,
    },
    Compose {
        file: PathBuf,
        service: Option<String>,
    },
}

/// An image explain, as the command line asks it.
pub(crate) struct Request<'a> {
    pub target: Target,
    /// `docker run --entrypoint E` and the arguments (`--image` only).
    pub entrypoint: Option<String>,
    pub args: Vec<String>,
    pub init: bool,
    pub platform: Platform,
    /// `platform` was asked for (`--platform`), not this machine's: an
    /// image in the store of another platform is refused.
    pub platform_asked: bool,
    pub offline: bool,
    pub format: OutputFormat,
    pub width: Option<usize>,
    pub registry: &'a RegistryArgs,
}

/// The image found: its config, and the store image when it is stored.
struct Found {
    name: String,
    digest: Option<String>,
    config: ImageConfig,
    stored: Option<Image>,
}

pub(crate) fn run(request: Request<'_>, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let (image, overrides, place) = runtime(&request)?;
    let store = if Store::exists_at(&settings.root) {
        Some(
            Store::open(&settings.root)
                .with_context(|| format!("opening the store at {}", settings.root.display()))?,
        )
    } else {
        None
    };
    let found = find(&image, store.as_ref(), &request, settings)?;
    let base = store
        .as_ref()
        .and_then(|s| find_base(s, &found.config, &request.platform));
    let subject = ImageSubject {
        reference: found.name.clone(),
        digest: found.digest.clone(),
        config: &found.config,
        base,
    };
    let files = match (&store, &found.stored) {
        (Some(store), Some(image)) => Some(StoreFiles::new(store, image, &found.name)),
        _ => None,
    };
    let mut explanation = explain_image(
        &subject,
        &overrides,
        files.as_ref().map(|f| f as &dyn ImageFiles),
    );
    if let Some(s) = explanation.subject.as_mut() {
        s.file = place.file;
        s.workload = place.workload;
        s.name = place.name;
        s.line = place.line;
    }
    print(&explanation, &request)?;
    Ok(if explanation.argv.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where the container is described.
#[derive(Default)]
struct Place {
    file: Option<String>,
    workload: Option<String>,
    name: Option<String>,
    line: Option<usize>,
}

/// The image to explain and what the runtime sets over it.
fn runtime(request: &Request<'_>) -> anyhow::Result<(String, Overrides, Place)> {
    match &request.target {
        Target::Image(reference) => Ok((
            reference.clone(),
            Overrides::docker_run_with(request.entrypoint.as_deref(), &request.args, request.init),
            Place::default(),
        )),
        Target::Pod { file, container } => {
            let (text, name) = read(file)?;
            let containers = kube::containers(&text, &name)?;
            let c = kube::select(containers, container.as_deref(), &name)?;
            let place = Place {
                file: Some(name),
                workload: Some(c.workload.clone()),
                name: Some(c.name.clone()),
                line: Some(c.line),
            };
            Ok((c.image, c.overrides, place))
        }
        Target::Compose { file, service } => {
            let (text, name) = read(file)?;
            let env = |key: &str| std::env::var(key).ok();
            let s = compose::service(&text, &name, service.as_deref(), &env)?;
            let Some(image) = s.image else {
                bail!(
                    "{name}: service {} has no image: (only build: {}): build it with `kiln build -t NAME {}` and set image: NAME, or explain its Dockerfile with `kiln explain {}`",
                    s.name,
                    s.build_context.as_deref().unwrap_or("?"),
                    s.build_context.as_deref().unwrap_or("."),
                    s.build_context.as_deref().unwrap_or("."),
                );
            };
            let place = Place {
                file: Some(name),
                workload: None,
                name: Some(s.name.clone()),
                line: Some(s.line),
            };
            Ok((image, s.overrides, place))
        }
    }
}

/// A manifest's text, and the name sources show it by (as given).
fn read(file: &std::path::Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok((text, file.display().to_string()))
}

/// The image from the store (by reference, id or digest), else (not
/// offline) its config from the registry.
fn find(
    image: &str,
    store: Option<&Store>,
    request: &Request<'_>,
    settings: &GlobalSettings,
) -> anyhow::Result<Found> {
    if let Some(store) = store {
        match store.find(image, &request.platform) {
            Ok(found) => {
                if let Some(tagged) = found.first() {
                    let stored = match request.platform_asked {
                        true => {
                            store.read_image_for(&tagged.descriptor, &request.platform, image)?
                        }
                        false => store.read_image(&tagged.descriptor, &request.platform)?,
                    };
                    // Its files are read (PID 1's script): layers a build
                    // left where they are are fetched, unless offline.
                    if !request.offline {
                        crate::cmd::fetch_missing_layers(store, &stored, settings)?;
                    }
                    return Ok(Found {
                        name: image.to_string(),
                        digest: Some(stored.manifest_descriptor.digest.to_string()),
                        config: stored.config.clone(),
                        stored: Some(stored),
                    });
                }
            }
            Err(kiln_layers::Error::ImageNotFound(_)) => {}
            Err(e) => return Err(e).with_context(|| format!("looking up {image} in the store")),
        }
    }
    if request.offline {
        bail!("image {image} is not in the local store (and --offline keeps kiln from asking its registry)");
    }
    let reference = Reference::parse(image).with_context(|| format!("image {image}"))?;
    let registry = RegistryConfigs::new(request.registry, settings)?;
    let found = registry
        .lookup(&reference, &request.platform)
        .with_context(|| format!("image {image}"))?;
    Ok(Found {
        name: image.to_string(),
        digest: found.digest.map(|d| d.to_string()),
        config: found.config,
        stored: None,
    })
}

fn print(e: &Explanation, request: &Request<'_>) -> anyhow::Result<()> {
    match request.format {
        OutputFormat::Json => write_stdout(&(serde_json::to_string_pretty(e)? + "\n")),
        OutputFormat::Text => {
            let invocation = invocation(e.subject.as_ref(), request);
            write_stdout(&render::text_width(e, &invocation, request.width))
        }
    }
}

/// `docker run [--init] [--entrypoint E] IMAGE [ARGS...]`.
fn invocation(subject: Option<&Subject>, request: &Request<'_>) -> String {
    let mut text = String::from("docker run");
    if request.init {
        text.push_str(" --init");
    }
    if let Some(e) = &request.entrypoint {
        text.push_str(&format!(
            " --entrypoint {}",
            crate::cmd::check::shell_word(e)
        ));
    }
    text.push(' ');
    text.push_str(subject.map(|s| s.image.as_str()).unwrap_or("IMAGE"));
    for a in &request.args {
        text.push(' ');
        text.push_str(&crate::cmd::check::shell_word(a));
    }
    text
}
