//! `--annotation` and `--label`: metadata the caller puts on the image,
//! where BuildKit puts it.
//!
//! An annotation is `[TYPES:]KEY=VALUE`, TYPES a comma-separated list of
//! `manifest`, `manifest-descriptor`, `index`, `index-descriptor`, each
//! with an optional `[os/arch[/variant]]` (buildx's syntax); no type means
//! `manifest`. Where each goes:
//!
//! - `manifest`: the image manifest's `annotations` (what a registry
//!   serves, `skopeo inspect --raw` shows);
//! - `manifest-descriptor`: the descriptor that points at the manifest:
//!   its entry in the store's `index.json`, in an OCI layout or archive
//!   output's `index.json`, and the metadata file's
//!   `containerimage.descriptor` (a registry push of a single manifest has
//!   no descriptor to carry it, as with BuildKit);
//! - `index`: the image index a build for several platforms, or with
//!   `--provenance` or `BUILDKIT_MULTI_PLATFORM`, writes (its
//!   `annotations`, what a registry serves);
//! - `index-descriptor`: the descriptor that points at that index: its
//!   entry in the store's `index.json`, in an OCI layout output's
//!   `index.json`, and the metadata file's `containerimage.descriptor`.
//!
//! A single-platform build without provenance or
//! `BUILDKIT_MULTI_PLATFORM` writes no index: the index
//! kinds are refused there, as BuildKit refuses them for a
//! single-platform export. With
//! several platforms each platform's manifest, and its entry in the index,
//! get the `manifest` and `manifest-descriptor` annotations that apply to
//! it.
//!
//! A platform-qualified annotation applies to that platform's manifest and
//! is an error when the build makes no such platform. An index kind's
//! platform names no manifest: as in BuildKit, the annotation goes on the
//! index; an output attribute's (`annotation-index[linux/arm64].k=v`) must
//! still name a platform the build makes, and a flag's is dropped, as
//! buildx drops it when it writes the flag into the outputs. With Docker media
//! types, only `manifest` annotations are allowed (BuildKit: "cannot export
//! annotations with oci-mediatypes=false").
//!
//! `--label K=V` sets the target image's `config.Labels[K]`, over the
//! Dockerfile's LABEL of the same key, with no history entry and no cache
//! key change (BuildKit's `label:` frontend option).
//!
//! ```
//! use kiln_builder::annotations::{Annotation, AnnotationTarget};
//! let parsed = Annotation::parse("manifest,manifest-descriptor:org.example=1").unwrap();
//! assert_eq!(parsed.len(), 2);
//! assert_eq!(parsed[1].target, AnnotationTarget::ManifestDescriptor);
//! assert_eq!(Annotation::parse("k=v").unwrap()[0].target, AnnotationTarget::Manifest);
//! ```

use std::collections::BTreeMap;

use kiln_layers::oci::{ManifestKind, Platform};
use kiln_layers::{Descriptor, Store};

/// Where an annotation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationTarget {
    Manifest,
    ManifestDescriptor,
    Index,
    IndexDescriptor,
}

impl AnnotationTarget {
    /// The type's word, as `--annotation` and output attributes spell it.
    pub fn word(self) -> &'static str {
        match self {
            AnnotationTarget::Manifest => "manifest",
            AnnotationTarget::ManifestDescriptor => "manifest-descriptor",
            AnnotationTarget::Index => "index",
            AnnotationTarget::IndexDescriptor => "index-descriptor",
        }
    }

    /// `index` or `index-descriptor`: one annotation for the whole index.
    pub fn is_index_kind(self) -> bool {
        matches!(
            self,
            AnnotationTarget::Index | AnnotationTarget::IndexDescriptor
        )
    }

    fn parse(word: &str) -> Option<AnnotationTarget> {
        [
            AnnotationTarget::Manifest,
            AnnotationTarget::ManifestDescriptor,
            AnnotationTarget::Index,
            AnnotationTarget::IndexDescriptor,
        ]
        .into_iter()
        .find(|target| target.word() == word)
    }
}

/// One `--annotation`, for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub target: AnnotationTarget,
    /// `manifest[linux/amd64]:…`: only that platform's.
    pub platform: Option<Platform>,
    pub key: String,
    pub value: String,
    /// Where it was given, for errors: `--annotation K=V`, or an
    /// output's attribute (`--output SPEC: annotation.K=V`).
    pub flag: String,
}

impl Annotation {
    /// Parses one `--annotation` flag (one annotation per type listed).
    pub fn parse(flag: &str) -> Result<Vec<Annotation>, String> {
        let given = format!("--annotation {flag}");
        let bad = |why: String| format!("{given}: {why}");
        let (left, value) = flag
            .split_once('=')
            .ok_or_else(|| bad("expected key=value".into()))?;
        let Some((types, key)) = left.split_once(':') else {
            return Ok(vec![Annotation {
                target: AnnotationTarget::Manifest,
                platform: None,
                key: left.to_string(),
                value: value.to_string(),
                flag: given.clone(),
            }]);
        };
        let mut out = Vec::new();
        for word in types.split(',') {
            let (kind, platform) = match word.split_once('[') {
                Some((kind, rest)) => {
                    let inner = rest.strip_suffix(']').ok_or_else(|| {
                        bad(format!("invalid annotation type {word:?}, expected type and optional platform in square brackets"))
                    })?;
                    let platform = Platform::parse(inner)
                        .map_err(|e| bad(format!("invalid platform {inner:?}: {e}")))?;
                    (kind, Some(platform))
                }
                None => (word, None),
            };
            let target = AnnotationTarget::parse(kind)
                .ok_or_else(|| bad(format!("unknown annotation type {kind:?}")))?;
            // buildx writes an index kind's flag into the outputs without
            // its platform (`AnnotationKey.String`): the index is one for
            // every platform.
            let platform = platform.filter(|_| !target.is_index_kind());
            out.push(Annotation {
                target,
                platform,
                key: key.to_string(),
                value: value.to_string(),
                flag: given.clone(),
            });
        }
        Ok(out)
    }

    /// The annotation an image output's attribute `key=value` gives, as
    /// BuildKit's image exporters read their attributes
    /// (`annotation[-TYPE][[PLATFORM]].KEY`, no type meaning `manifest`);
    /// `None` when `key` is not of that form (then it is no annotation,
    /// and an unknown attribute). `spec` is the output, named by the
    /// errors [`check`] gives later; this one's errors name the attribute
    /// only (the caller names the output).
    pub fn from_output_attribute(
        key: &str,
        value: &str,
        spec: &str,
    ) -> Result<Option<Annotation>, String> {
        let given = format!("--output {spec}: {key}={value}");
        let attribute = format!("{key}={value}");
        let Some(rest) = key.strip_prefix("annotation") else {
            return Ok(None);
        };
        let (kind, rest) = match rest.strip_prefix('-') {
            Some(typed) => {
                let end = typed
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                    .unwrap_or(typed.len());
                if end == 0 {
                    return Ok(None);
                }
                typed.split_at(end)
            }
            None => ("", rest),
        };
        let (platform, rest) = match rest.strip_prefix('[') {
            Some(bracketed) => {
                let Some((inner, rest)) = bracketed.split_once(']') else {
                    return Ok(None);
                };
                let allowed = |c: char| c.is_ascii_alphanumeric() || "_/-".contains(c);
                if inner.is_empty() || !inner.chars().all(allowed) {
                    return Ok(None);
                }
                (Some(inner), rest)
            }
            None => (None, rest),
        };
        let Some(name) = rest.strip_prefix('.') else {
            return Ok(None);
        };
        // BuildKit's `\.(\S+)$`: Go's `\s` is ASCII's five spaces only.
        if name.is_empty()
            || name
                .chars()
                .any(|c| matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r'))
        {
            return Ok(None);
        }
        let target = match kind {
            "" => AnnotationTarget::Manifest,
            kind => AnnotationTarget::parse(kind)
                .ok_or_else(|| format!("{attribute}: unrecognized annotation type {kind}"))?,
        };
        let platform = platform
            .map(|p| {
                Platform::parse(p).map_err(|e| format!("{attribute}: invalid platform {p:?}: {e}"))
            })
            .transpose()?;
        Ok(Some(Annotation {
            target,
            platform,
            key: name.to_string(),
            value: value.to_string(),
            flag: given,
        }))
    }

    /// Whether `other` sets the same key in the same place (then one of
    /// them wins).
    pub fn same_place(&self, other: &Annotation) -> bool {
        self.target == other.target
            && self.key == other.key
            && self.platform.as_ref().map(Platform::normalized)
                == other.platform.as_ref().map(Platform::normalized)
    }

    fn applies_to(&self, platform: &Platform) -> bool {
        self.platform
            .as_ref()
            .is_none_or(|p| p.normalized() == platform.normalized())
    }
}

/// Refuses what a build for `platforms` cannot honour: index annotations
/// when it writes no index (`writes_index`: several platforms,
/// `--provenance`, or `BUILDKIT_MULTI_PLATFORM`), a platform it does not
/// make, descriptor annotations
/// with Docker media types.
pub fn check(
    annotations: &[Annotation],
    platforms: &[Platform],
    docker_media_types: bool,
    writes_index: bool,
) -> Result<(), String> {
    let made: Vec<Platform> = platforms.iter().map(Platform::normalized).collect();
    for a in annotations {
        let flag = &a.flag;
        if a.target.is_index_kind() && !writes_index {
            return Err(format!(
                "{flag}: index annotations not supported for single platform export \
                 (kiln writes a single-platform image as one manifest, with no index to annotate; \
                 a multi-platform build or --provenance writes an index)"
            ));
        }
        if let Some(p) = &a.platform {
            if !made.contains(&p.normalized()) {
                let names: Vec<String> = made.iter().map(Platform::to_string).collect();
                return Err(format!(
                    "{flag}: invalid annotation: no platform {p} found in source \
                     (the build makes {})",
                    names.join(", ")
                ));
            }
        }
        if docker_media_types && a.target != AnnotationTarget::Manifest {
            return Err(format!(
                "{flag}: cannot export annotations with Docker media types \
                 (oci-mediatypes=false); only manifest annotations can be written"
            ));
        }
    }
    Ok(())
}

/// The manifest `desc` (of `platform`) with the annotations that apply
/// written into it and onto its descriptor; `desc` itself when none do.
pub fn annotate(
    store: &Store,
    desc: &Descriptor,
    platform: &Platform,
    annotations: &[Annotation],
) -> Result<Descriptor, kiln_layers::Error> {
    // Those for every platform first, then this platform's, which win a
    // key both set (BuildKit's `Annotations.Platform`); in each group the
    // last given wins.
    let pick = |target: AnnotationTarget| -> BTreeMap<String, String> {
        let applying = annotations
            .iter()
            .filter(|a| a.target == target && a.applies_to(platform));
        let (general, specific): (Vec<_>, Vec<_>) = applying.partition(|a| a.platform.is_none());
        general
            .into_iter()
            .chain(specific)
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect()
    };
    let in_manifest = pick(AnnotationTarget::Manifest);
    let on_descriptor = pick(AnnotationTarget::ManifestDescriptor);
    let mut out = desc.clone();
    if !in_manifest.is_empty() {
        let ManifestKind::Image(mut manifest) = store.read_manifest(desc)? else {
            return Err(kiln_layers::Error::InvalidManifest {
                what: format!("manifest {}", desc.digest),
                reason: "a built image is one manifest, not an index".into(),
            });
        };
        manifest.annotations.extend(in_manifest);
        out = store.put_json(&desc.media_type, &manifest)?;
        out.platform = desc.platform.clone();
        out.annotations = desc.annotations.clone();
    }
    out.annotations.extend(on_descriptor);
    Ok(out)
}

/// The `index` annotations (their platforms aside, as BuildKit's).
pub fn for_index(annotations: &[Annotation]) -> BTreeMap<String, String> {
    pick_all(annotations, AnnotationTarget::Index)
}

/// The `index-descriptor` annotations.
pub fn for_index_descriptor(annotations: &[Annotation]) -> BTreeMap<String, String> {
    pick_all(annotations, AnnotationTarget::IndexDescriptor)
}

fn pick_all(annotations: &[Annotation], target: AnnotationTarget) -> BTreeMap<String, String> {
    annotations
        .iter()
        .filter(|a| a.target == target)
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect()
}

/// `--label K=V` (`K` alone: an empty value, as buildx); an empty key is
/// refused, as buildx refuses it.
pub fn parse_label(flag: &str) -> Result<(String, String), String> {
    let (key, value) = flag.split_once('=').unwrap_or((flag, ""));
    if key.is_empty() {
        return Err(format!(
            "--label {flag:?}: invalid key-value pair: empty key"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_platforms_and_errors() {
        let a = Annotation::parse("manifest[linux/arm64],index:k=v=w").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].platform, Some(Platform::parse("linux/arm64").unwrap()));
        assert_eq!((a[0].key.as_str(), a[0].value.as_str()), ("k", "v=w"));
        assert_eq!(a[1].target, AnnotationTarget::Index);
        for (flag, wanted) in [
            ("novalue", "expected key=value"),
            ("bogus:k=v", "unknown annotation type \"bogus\""),
            ("manifest[linux:k=v", "square brackets"),
            ("manifest[x]:k=v", "invalid platform"),
        ] {
            let err = Annotation::parse(flag).unwrap_err();
            assert!(err.contains(wanted), "{flag}: {err}");
        }
        let amd64 = [Platform::parse("linux/amd64").unwrap()];
        let both = [
            Platform::parse("linux/amd64").unwrap(),
            Platform::parse("linux/arm64").unwrap(),
        ];
        let index = Annotation::parse("index,index-descriptor:k=v").unwrap();
        let err = check(&index, &amd64, false, false).unwrap_err();
        assert!(err.contains("index annotations not supported"), "{err}");
        assert!(check(&index, &both, false, true).is_ok());
        assert!(
            check(&index, &amd64, false, true).is_ok(),
            "one platform with --provenance: an index"
        );
        assert!(
            check(&index, &both, true, true).is_err(),
            "not on a manifest list"
        );
        // A flag's index platform is dropped, as buildx drops it; an
        // output attribute's must name a platform the build makes, as
        // BuildKit's exporter requires.
        let index_qualified = Annotation::parse("index[linux/s390x]:k=v").unwrap();
        assert_eq!(index_qualified[0].platform, None);
        assert!(check(&index_qualified, &both, false, true).is_ok());
        let attribute = |key: &str| {
            vec![
                Annotation::from_output_attribute(key, "v", "type=oci,dest=x")
                    .unwrap()
                    .unwrap(),
            ]
        };
        let err = check(
            &attribute("annotation-index[linux/s390x].k"),
            &both,
            false,
            true,
        )
        .unwrap_err();
        assert!(
            err.contains(
                "annotation-index[linux/s390x].k=v: invalid annotation: no platform linux/s390x"
            ),
            "{err}"
        );
        let made = attribute("annotation-index-descriptor[linux/arm64].k");
        assert!(check(&made, &both, false, true).is_ok());
        assert_eq!(
            for_index_descriptor(&made),
            [("k".into(), "v".into())].into()
        );
        let other = Annotation::parse("manifest[linux/arm64]:k=v").unwrap();
        let err = check(&other, &amd64, false, true).unwrap_err();
        assert!(err.contains("no platform linux/arm64"), "{err}");
        assert!(check(&other, &both, false, true).is_ok());
        let s390x = Annotation::parse("manifest[linux/s390x]:k=v").unwrap();
        let err = check(&s390x, &both, false, true).unwrap_err();
        assert!(
            err.contains("(the build makes linux/amd64, linux/arm64)"),
            "{err}"
        );
        let desc = Annotation::parse("manifest-descriptor:k=v").unwrap();
        assert!(check(&desc, &amd64, true, true).is_err());
        assert!(check(&desc, &amd64, false, true).is_ok());
        assert_eq!(for_index(&index), [("k".into(), "v".into())].into());
        assert_eq!(
            for_index_descriptor(&index),
            [("k".into(), "v".into())].into()
        );
        assert!(for_index(&desc).is_empty());
        assert_eq!(parse_label("a"), Ok(("a".into(), String::new())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        for flag in ["=v", "", "="] {
            let err = parse_label(flag).unwrap_err();
            assert!(err.ends_with("empty key"), "{flag}: {err}");
        }
    }

    #[test]
    fn output_attributes_are_read_as_buildkits_image_exporter_reads_them() {
        let spec = "type=oci,dest=x";
        let read = |key: &str| Annotation::from_output_attribute(key, "v", spec);
        let plain = read("annotation.org.example").unwrap().unwrap();
        assert_eq!(plain.target, AnnotationTarget::Manifest);
        assert_eq!(
            (plain.key.as_str(), plain.value.as_str()),
            ("org.example", "v")
        );
        assert_eq!(
            plain.flag,
            "--output type=oci,dest=x: annotation.org.example=v"
        );
        let typed = read("annotation-manifest-descriptor[linux/arm64].k")
            .unwrap()
            .unwrap();
        assert_eq!(typed.target, AnnotationTarget::ManifestDescriptor);
        assert_eq!(
            typed.platform,
            Some(Platform::parse("linux/arm64").unwrap())
        );
        assert_eq!(
            read("annotation-index.k").unwrap().unwrap().target,
            AnnotationTarget::Index
        );
        // Not of the form: no annotation (an unknown attribute).
        for key in [
            "annotations.k",
            "annotation",
            "annotation.",
            "annotation-.k",
            "annotation[].k",
            "annotation.k v",
            "annotation.k\tv",
        ] {
            assert_eq!(read(key), Ok(None), "{key}");
        }
        // Go's `\S` takes any other character, Unicode spaces too.
        for key in ["annotation.k\u{a0}v", "annotation.k\u{b}v"] {
            let name = &key["annotation.".len()..];
            assert_eq!(read(key).unwrap().unwrap().key, name, "{key:?}");
        }
        let err = read("annotation-layer.k").unwrap_err();
        assert_eq!(
            err,
            "annotation-layer.k=v: unrecognized annotation type layer"
        );
        assert!(read("annotation-manifest[x].k")
            .unwrap_err()
            .contains("invalid platform"));
        // Where it was given shows in check's errors.
        let err = check(
            &[read("annotation-index.k").unwrap().unwrap()],
            &[],
            false,
            false,
        )
        .unwrap_err();
        assert!(
            err.starts_with("--output type=oci,dest=x: annotation-index.k=v: index annotations"),
            "{err}"
        );
    }
}
