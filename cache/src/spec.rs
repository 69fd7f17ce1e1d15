//! `--cache-to` and `--cache-from` as buildx reads them: `type=KIND,key=value,…`
//! (CSV), or a bare reference standing for `type=registry,ref=REF`.
//!
//! Supported: `--cache-to type=registry,ref=REF` and `type=local,dest=DIR`
//! (each with `mode=min|max`, `compression=gzip|zstd`,
//! `oci-mediatypes=true|false`, `image-manifest=true|false`,
//! `ignore-error=true|false`; local also `tag=`), `type=inline`
//! (`mode=min`); `--cache-from type=registry,ref=REF` (a cache manifest, or
//! an image with inline cache) and `type=local,src=DIR[,tag=T|,digest=D]`.
//! Anything else — another type (gha, s3, azblob), an unknown key, a value
//! out of range — is refused, naming it and what is supported.
//!
//! ```
//! use kiln_cache::spec::{parse_cache_from, parse_cache_to, CacheFrom, CacheTo};
//! let to = parse_cache_to("type=registry,ref=localhost:5000/app:cache,mode=max").unwrap();
//! assert!(matches!(to, CacheTo::Registry { .. }));
//! assert!(matches!(parse_cache_from("localhost:5000/app:cache").unwrap(), CacheFrom::Registry { .. }));
//! let err = parse_cache_to("type=gha").unwrap_err().to_string();
//! assert!(err.contains("type=gha is not supported"), "{err}");
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_builder::cache::CacheMode;
use kiln_builder::export::CompressionAttributes;
use kiln_layers::compressed::LayerForm;
use kiln_layers::{Compression, Digest, Reference};

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheTo {
    /// A cache manifest (or index) pushed to `reference`; `insecure`
    /// (`registry.insecure=true`): its registry is reached over plain
    /// HTTP, or HTTPS without certificate checks.
    Registry {
        reference: Reference,
        options: ExportOptions,
        insecure: bool,
    },
    /// An OCI layout in `dest`, the cache manifest tagged `tag` there.
    Local {
        dest: PathBuf,
        tag: String,
        options: ExportOptions,
    },
    /// The cache's steps in the image's config.
    Inline,
}

/// How a cache is exported (registry and local).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    pub mode: CacheMode,
    /// How the layers the build made are compressed (`compression=`,
    /// `compression-level=`); one already compressed goes as it is,
    /// unless `force-compression=true` ([`LayerForm`]).
    pub compression: LayerForm,
    /// OCI media types (else Docker's, and an index: a Docker manifest
    /// list).
    pub oci_media_types: bool,
    /// An image manifest with an `artifactType` (else an index of blobs).
    pub image_manifest: bool,
    /// A failed export is a warning, not a failed build.
    pub ignore_error: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            mode: CacheMode::Min,
            compression: LayerForm::from(Compression::Gzip),
            oci_media_types: true,
            image_manifest: true,
            ignore_error: false,
        }
    }
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFrom {
    /// A cache manifest, or an image with inline cache, at a reference;
    /// `insecure` as [`CacheTo::Registry`]'s.
    Registry {
        reference: Reference,
        insecure: bool,
    },
    /// An OCI layout: the manifest tagged `tag`, or the one `digest` names.
    Local {
        src: PathBuf,
        tag: String,
        digest: Option<Digest>,
    },
}

/// A flag value that is refused.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {spec}: {message}")]
pub struct SpecError {
    pub flag: &'static str,
    pub spec: String,
    pub message: String,
}

/// Parses a `--cache-to` value.
pub fn parse_cache_to(spec: &str) -> Result<CacheTo, SpecError> {
    let mut fields = Fields::parse("--cache-to", spec)?;
    let to = match fields.kind.as_str() {
        "registry" => {
            let reference = fields.reference()?;
            // The cache's manifest is pushed under the tag: a digest given
            // with it would be dropped, and a bare name's tag (latest)
            // would be overwritten in its place.
            if let Some(digest) = &reference.digest {
                return Err(fields.error(format!(
                    "ref={reference}: a cache is pushed under a tag, not to a digest \
                     ({digest} would be ignored); name a tag"
                )));
            }
            CacheTo::Registry {
                reference,
                options: fields.export_options()?,
                insecure: fields.flag("registry.insecure")?.unwrap_or(false),
            }
        }
        "local" => CacheTo::Local {
            dest: fields.required("dest")?.into(),
            tag: fields.take("tag").unwrap_or_else(|| "latest".into()),
            options: fields.export_options()?,
        },
        "inline" => {
            if let Some(mode) = fields.take("mode").filter(|m| m != "min") {
                return Err(fields.error(format!(
                    "mode={mode}: type=inline exports mode=min only (the result's layers), as BuildKit"
                )));
            }
            CacheTo::Inline
        }
        other => return Err(fields.unsupported(other, "registry, local and inline")),
    };
    fields.finish()?;
    Ok(to)
}

/// Parses a `--cache-from` value.
pub fn parse_cache_from(spec: &str) -> Result<CacheFrom, SpecError> {
    let mut fields = Fields::parse("--cache-from", spec)?;
    let from = match fields.kind.as_str() {
        "registry" => CacheFrom::Registry {
            reference: fields.reference()?,
            insecure: fields.flag("registry.insecure")?.unwrap_or(false),
        },
        "local" => CacheFrom::Local {
            src: fields.required("src")?.into(),
            tag: fields.take("tag").unwrap_or_else(|| "latest".into()),
            digest: match fields.take("digest") {
                Some(d) => {
                    Some(Digest::parse(&d).map_err(|e| fields.error(format!("digest={d}: {e}")))?)
                }
                None => None,
            },
        },
        other => return Err(fields.unsupported(other, "registry and local")),
    };
    fields.finish()?;
    Ok(from)
}

/// A value's fields, taken one by one; what is left at the end is unknown.
struct Fields {
    flag: &'static str,
    spec: String,
    kind: String,
    map: BTreeMap<String, String>,
}

impl Fields {
    fn parse(flag: &'static str, spec: &str) -> Result<Fields, SpecError> {
        let error = |message: String| SpecError {
            flag,
            spec: spec.to_string(),
            message,
        };
        if !spec.contains('=') {
            if spec.trim().is_empty() {
                return Err(error("a reference or type=… is required".into()));
            }
            // buildx: a bare value is a registry reference.
            return Ok(Fields {
                flag,
                spec: spec.to_string(),
                kind: "registry".into(),
                map: BTreeMap::from([("ref".to_string(), spec.trim().to_string())]),
            });
        }
        let mut map = BTreeMap::new();
        let fields = kiln_parser::mount::csv_fields(spec).map_err(|e| error(e.to_string()))?;
        for field in fields {
            let (key, value) = field.split_once('=').ok_or_else(|| {
                error(format!("invalid field '{field}' must be a key=value pair"))
            })?;
            map.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
        let kind = map
            .remove("type")
            .ok_or_else(|| error("type= is required".into()))?;
        Ok(Fields {
            flag,
            spec: spec.to_string(),
            kind,
            map,
        })
    }

    fn error(&self, message: String) -> SpecError {
        SpecError {
            flag: self.flag,
            spec: self.spec.clone(),
            message,
        }
    }

    fn unsupported(&self, kind: &str, supported: &str) -> SpecError {
        self.error(format!(
            "type={kind} is not supported: kiln's {} types are {supported}",
            self.flag
        ))
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.map.remove(key)
    }

    fn required(&mut self, key: &str) -> Result<String, SpecError> {
        self.take(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| self.error(format!("{key}= is required for type={}", self.kind)))
    }

    fn reference(&mut self) -> Result<Reference, SpecError> {
        let text = self.required("ref")?;
        Reference::parse(&text).map_err(|e| self.error(format!("ref={text}: {e}")))
    }

    /// A boolean as Go's `strconv.ParseBool` reads it.
    fn flag(&mut self, key: &str) -> Result<Option<bool>, SpecError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        match kiln_parser::mount::parse_go_bool(&value) {
            Some(flag) => Ok(Some(flag)),
            None => Err(self.error(format!("{key}={value}: true or false"))),
        }
    }

    fn export_options(&mut self) -> Result<ExportOptions, SpecError> {
        let mut options = ExportOptions::default();
        if let Some(mode) = self.take("mode") {
            options.mode = match mode.as_str() {
                "min" => CacheMode::Min,
                "max" => CacheMode::Max,
                other => return Err(self.error(format!("mode={other}: min or max"))),
            };
        }
        let said = CompressionAttributes::take(&mut self.map).map_err(|why| self.error(why))?;
        options.compression = LayerForm {
            compression: said.compression.unwrap_or(Compression::Gzip),
            force: said.force.unwrap_or(false),
            level: said.level,
        };
        if let Some(level) = said.level {
            kiln_layers::compress::check_level(options.compression.compression, level)
                .map_err(|why| self.error(why))?;
        }
        let oci = self.flag("oci-mediatypes")?;
        options.oci_media_types = oci.unwrap_or(true);
        // As BuildKit: an image manifest unless told otherwise, or unless
        // Docker media types were asked for (a manifest list then).
        options.image_manifest = self.flag("image-manifest")?.unwrap_or(oci != Some(false));
        if options.image_manifest && !options.oci_media_types {
            return Err(self.error(
                "image-manifest=true needs oci-mediatypes=true (a Docker manifest cannot say it is a cache)".into(),
            ));
        }
        options.ignore_error = self.flag("ignore-error")?.unwrap_or(false);
        Ok(options)
    }

    /// Refuses what no one took, naming what the flag's type takes.
    fn finish(self) -> Result<(), SpecError> {
        const EXPORT: &str = "mode=, compression=, compression-level=, force-compression=, \
                              oci-mediatypes=, image-manifest=, ignore-error=";
        let takes = match (self.flag, self.kind.as_str()) {
            ("--cache-to", "registry") => format!("ref=, {EXPORT}, registry.insecure="),
            ("--cache-to", "local") => format!("dest=, tag=, {EXPORT}"),
            ("--cache-to", _) => "mode=min".to_string(),
            (_, "registry") => "ref=, registry.insecure=".to_string(),
            _ => "src=, tag=, digest=".to_string(),
        };
        match self.map.keys().next() {
            Some(key) => Err(self.error(format!(
                "{key}= is not an option of type={} here (kiln's {} type={} takes {takes})",
                self.kind, self.flag, self.kind
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_exports_take_buildkits_options_and_defaults() {
        let CacheTo::Registry {
            reference,
            options,
            insecure,
        } = parse_cache_to("type=registry,ref=r:5000/app:cache").unwrap()
        else {
            panic!()
        };
        assert_eq!(reference.to_string(), "r:5000/app:cache");
        assert_eq!(options, ExportOptions::default());
        assert!(!insecure);
        // registry.insecure as BuildKit's registry cache reads it (Go's
        // ParseBool: an empty value is no boolean), to and from.
        let insecure_to = |value: &str| {
            parse_cache_to(&format!(
                "type=registry,ref=r/app:c,registry.insecure={value}"
            ))
        };
        assert!(matches!(
            insecure_to("true"),
            Ok(CacheTo::Registry { insecure: true, .. })
        ));
        assert!(matches!(
            insecure_to("0"),
            Ok(CacheTo::Registry {
                insecure: false,
                ..
            })
        ));
        assert!(insecure_to("").is_err());
        assert!(matches!(
            parse_cache_from("type=registry,ref=r/app:c,registry.insecure=1"),
            Ok(CacheFrom::Registry { insecure: true, .. })
        ));
        assert!(parse_cache_to("type=local,dest=d,registry.insecure=true").is_err());
        let CacheTo::Registry { options, .. } = parse_cache_to(
            "type=registry,ref=r:5000/app:cache,mode=max,compression=zstd,oci-mediatypes=false,ignore-error=true",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(options.mode, CacheMode::Max);
        assert_eq!(options.compression.compression, Compression::Zstd);
        assert!(!options.oci_media_types && !options.image_manifest && options.ignore_error);
        let CacheTo::Local { options, .. } = parse_cache_to(
            "type=local,dest=d,compression=gzip,compression-level=1,force-compression=",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            options.compression,
            LayerForm {
                compression: Compression::Gzip,
                force: true,
                level: Some(1),
            }
        );
        for (spec, wanted) in [
            ("compression=zstd,compression-level=0", "zstd takes 1 to 22"),
            (
                "compression=uncompressed,compression-level=1",
                "uncompressed layers have no level",
            ),
            ("compression-level=x", "compression-level=x: a number"),
            (
                "force-compression=maybe",
                "force-compression=maybe: true or false",
            ),
            (
                "compression=estargz",
                "uncompressed, or compressed with gzip or zstd",
            ),
        ] {
            let err = parse_cache_to(&format!("type=local,dest=d,{spec}")).unwrap_err();
            assert!(err.to_string().contains(wanted), "{spec}: {err}");
        }
        let bare = parse_cache_to("r:5000/app:cache").unwrap();
        assert!(matches!(bare, CacheTo::Registry { .. }));
    }

    #[test]
    fn local_and_inline() {
        assert_eq!(
            parse_cache_to("type=local,dest=/tmp/c,image-manifest=false").unwrap(),
            CacheTo::Local {
                dest: "/tmp/c".into(),
                tag: "latest".into(),
                options: ExportOptions {
                    image_manifest: false,
                    ..ExportOptions::default()
                }
            }
        );
        assert_eq!(parse_cache_to("type=inline").unwrap(), CacheTo::Inline);
        assert_eq!(
            parse_cache_from("type=local,src=/tmp/c,tag=v1").unwrap(),
            CacheFrom::Local {
                src: "/tmp/c".into(),
                tag: "v1".into(),
                digest: None
            }
        );
    }

    #[test]
    fn refusals_name_the_flag_and_what_is_supported() {
        let cases = [
            (
                parse_cache_to("type=gha").err(),
                "type=gha is not supported: kiln's --cache-to types are registry, local and inline",
            ),
            (
                parse_cache_from("type=s3,bucket=b").err(),
                "type=s3 is not supported: kiln's --cache-from types are registry and local",
            ),
            (
                parse_cache_to("type=azblob,name=x").err(),
                "type=azblob is not supported",
            ),
            (
                parse_cache_to("type=registry,ref=r/a,colour=blue").err(),
                "colour= is not an option of type=registry",
            ),
            (
                parse_cache_to("type=registry").err(),
                "ref= is required for type=registry",
            ),
            (
                parse_cache_to("type=local").err(),
                "dest= is required for type=local",
            ),
            (
                parse_cache_to("type=registry,ref=r/a,mode=all").err(),
                "mode=all: min or max",
            ),
            (
                parse_cache_to("type=registry,ref=r/a,compression=estargz").err(),
                "compression=estargz: kiln writes the layers it makes uncompressed, or compressed with gzip or zstd",
            ),
            (
                parse_cache_to("type=registry,ref=r/a,compression-level=30").err(),
                "compression-level=30: gzip takes 0 to 9",
            ),
            (
                parse_cache_to("type=registry,ref=r/a,oci-mediatypes=false,image-manifest=true")
                    .err(),
                "image-manifest=true needs oci-mediatypes=true",
            ),
            (
                parse_cache_to("type=registry,ref=r/a,ignore-error=maybe").err(),
                "ignore-error=maybe: true or false",
            ),
            (
                parse_cache_to("type=inline,mode=max").err(),
                "type=inline exports mode=min only",
            ),
            (
                parse_cache_from("type=local,src=/x,dest=/y").err(),
                "dest= is not an option of type=local here (kiln's --cache-from type=local \
                 takes src=, tag=, digest=)",
            ),
            (
                parse_cache_to("type=local,dest=/x,registry.insecure=true").err(),
                "registry.insecure= is not an option of type=local here (kiln's --cache-to \
                 type=local takes dest=, tag=, mode=, compression=, compression-level=, \
                 force-compression=, oci-mediatypes=, image-manifest=, ignore-error=)",
            ),
            (parse_cache_from("mode=max").err(), "type= is required"),
        ];
        for (err, wanted) in cases {
            let text = err.expect(wanted).to_string();
            assert!(text.contains(wanted), "{text:?} lacks {wanted:?}");
            assert!(text.starts_with("--cache-"), "{text}");
        }
    }
}
