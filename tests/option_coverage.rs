//! The rule of honest options, enforced: every flag of `kiln build` and of
//! `kiln run` (as clap lists them in `--help`; the global ones, in the
//! build's table), every instruction flag the parser accepts
//! (`kiln_parser::instructions::INSTRUCTION_FLAGS`) and every `--mount`
//! option and type (`kiln_parser::mount`) has at least one case below that
//! shows its effect or its refusal: a test function (whose body must use
//! the option) or a data-driven case directory (whose Dockerfile must). A
//! new flag without a case, or a case that no longer uses its option,
//! fails this test.

mod common;

use std::path::PathBuf;

/// `kiln build` flags → the spellings a case may use (long, short, the
/// environment variable behind it) and the cases.
const BUILD_FLAGS: &[(&str, &[&str], &[&str])] = &[
    ("--add-host", &["--add-host"], &["tests/options.rs::shm_size_ulimit_and_add_host"]),
    ("--annotation", &["--annotation"], &["tests/contexts.rs::labels_and_annotations_go_where_buildkit_puts_them", "tests/multiplatform.rs::annotations_and_labels_of_a_two_platform_build", "tests/provenance.rs::provenance_attestation_in_the_pushed_index"]),
    ("--attest", &["--attest"], &["tests/provenance.rs::provenance_attestation_in_the_pushed_index", "tests/provenance.rs::provenance_requests_kiln_cannot_honour_are_refused"]),
    ("--allow", &["--allow"], &["tests/options.rs::entitlements_insecure_and_host_network"]),
    ("--cache-from", &["--cache-from"], &["tests/cache.rs::a_local_cache_travels_to_a_second_runner", "tests/cache.rs::unsupported_cache_types_and_keys_are_refused_before_building"]),
    ("--cache-to", &["--cache-to"], &["tests/cache.rs::a_local_cache_travels_to_a_second_runner", "tests/cache.rs::a_broken_local_cache_is_a_warning_and_the_build_runs_without_it", "tests/cache.rs::unsupported_cache_types_and_keys_are_refused_before_building"]),
    ("--build-context", &["--build-context"], &["tests/contexts.rs::build_contexts_of_each_kind", "tests/contexts.rs::oci_layout_contexts_as_buildx_resolves_them"]),
    ("--build-arg", &["--build-arg"], &["tests/options.rs::buildkit_build_args_and_syntax", "tests/build.rs::build_checks_warn_fail_and_reach_the_metadata_file"]),
    ("--ca-cert", &["--ca-cert"], &["tests/registry.rs::login_logout_against_tls_registry_with_basic_auth"]),
    ("--call", &["--call"], &["tests/options.rs::call_answers_targets_and_checks_as_buildx"]),
    ("--check", &["--check"], &["tests/explain.rs::build_checks_are_kiln_checks_buildkit_rules"]),
    ("--compression", &["--compression"], &["tests/build.rs::push_to_a_registry"]),
    ("--docker-mediatypes", &["--docker-mediatypes"], &["tests/build.rs::onbuild_triggers_of_a_base_image_and_docker_media_types"]),
    ("--dry-run", &["--dry-run"], &["tests/options.rs::dry_run_format_file_quiet_and_verbose"]),
    ("--file", &["-f", "--file"], &["tests/options.rs::dry_run_format_file_quiet_and_verbose", "tests/build.rs::dockerfile_specific_dockerignore_wins"]),
    ("--format", &["--format"], &["tests/options.rs::dry_run_format_file_quiet_and_verbose"]),
    ("--iidfile", &["--iidfile"], &["tests/build.rs::outputs_tags_iidfile_and_metadata_file"]),
    ("--insecure-registry", &["--insecure-registry"], &["tests/build.rs::push_to_a_registry"]),
    ("--isolation", &["--isolation"], &["tests/rootless.rs::a_rootless_build_makes_the_image_root_makes", "tests/snapshotter.rs::isolation_chroot_builds_the_image_namespaces_build"]),
    ("--load", &["--load"], &["tests/docker_load.rs::load_puts_the_image_into_the_docker_daemon"]),
    ("--label", &["--label"], &["tests/contexts.rs::labels_and_annotations_go_where_buildkit_puts_them", "tests/multiplatform.rs::annotations_and_labels_of_a_two_platform_build"]),
    ("--memory", &["--memory", "-m"], &["tests/security/limits.rs::memory_flag_on_build_and_run"]),
    ("--metadata-file", &["--metadata-file"], &["tests/build.rs::outputs_tags_iidfile_and_metadata_file"]),
    ("--network", &["--network"], &["tests/build.rs::network_none_leaves_only_loopback", "tests/build.rs::run_network_is_private_by_default_and_host_when_asked"]),
    ("--no-cache", &["--no-cache"], &["tests/build.rs::target_builds_only_the_stages_it_needs_and_no_cache_reruns"]),
    ("--no-cache-filter", &["--no-cache-filter"], &["tests/options.rs::no_cache_filter_reruns_only_the_named_stage"]),
    ("--output", &["--output", "-o"], &["tests/options.rs::output_shorthands_tar_and_image_names", "tests/build.rs::registry_and_image_outputs_push", "tests/build.rs::outputs_tags_iidfile_and_metadata_file", "tests/options.rs::archives_are_tars_named_as_buildx_names_them"]),
    ("--pids-limit", &["--pids-limit"], &["tests/security/limits.rs::pids_limit_flag_on_build_and_run"]),
    ("--platform", &["--platform", "DOCKER_DEFAULT_PLATFORM"], &["tests/build_platform.rs::platform_arm64_picks_the_arm64_manifest_and_expands_target_args", "tests/multiplatform.rs::one_build_two_platforms_one_index", "tests/multiplatform.rs::outputs_of_a_two_platform_build"]),
    ("--progress", &["--progress"], &["tests/build.rs::progress_plain_snapshots", "tests/build.rs::progress_tty_draws_a_live_view", "tests/build.rs::progress_quiet_prints_only_the_id_and_json_one_event_per_line"]),
    ("--provenance", &["--provenance"], &["tests/provenance.rs::provenance_attestation_in_the_pushed_index", "tests/provenance.rs::provenance_of_a_git_context_names_its_commit", "tests/provenance.rs::provenance_requests_kiln_cannot_honour_are_refused"]),
    ("--pull", &["--pull"], &["tests/options.rs::pull_policies"]),
    ("--push", &["--push"], &["tests/build.rs::push_to_a_registry"]),
    ("--quiet", &["-q", "--quiet"], &["tests/options.rs::dry_run_format_file_quiet_and_verbose"]),
    ("--registry-config", &["--registry-config", "KILN_REGISTRY_CONFIG"], &["tests/registry_mirrors.rs::pull_and_build_get_their_images_through_the_mirror", "tests/registry_mirrors.rs::unknown_keys_and_missing_files_are_refused_by_name", "tests/registry_mirrors.rs::http_true_reaches_a_plain_http_registry_by_name"]),
    ("--registry-speed-limit", &["--registry-speed-limit", "KILN_REGISTRY_SPEED_LIMIT"], &["tests/registry.rs::registry_speed_settings_cut_a_slow_blob"]),
    ("--registry-speed-time", &["--registry-speed-time", "KILN_REGISTRY_SPEED_TIME"], &["tests/registry.rs::registry_speed_settings_cut_a_slow_blob"]),
    ("--registry-timeout", &["--registry-timeout", "KILN_REGISTRY_TIMEOUT"], &["tests/registry.rs::registry_timeout_is_the_deadline_of_a_manifest"]),
    ("--root", &["--root"], &["tests/build.rs::source_date_epoch_gives_the_same_image_in_two_roots_whatever_they_cached"]),
    ("--secret", &["--secret"], &["tests/options.rs::secret_mounts_env_mode_owner_and_flag_forms", "tests/options.rs::secret_flag_defaults_and_required"]),
    ("--shm-size", &["--shm-size"], &["tests/options.rs::shm_size_ulimit_and_add_host"]),
    ("--ssh", &["--ssh"], &["tests/build.rs::ssh_flag_forwards_agents_to_run_mounts"]),
    ("--tag", &["-t", "--tag"], &["tests/build.rs::outputs_tags_iidfile_and_metadata_file"]),
    ("--target", &["--target"], &["tests/build.rs::target_builds_only_the_stages_it_needs_and_no_cache_reruns"]),
    ("--ulimit", &["--ulimit"], &["tests/options.rs::shm_size_ulimit_and_add_host"]),
    ("--verbose", &["-v", "--verbose"], &["tests/options.rs::dry_run_format_file_quiet_and_verbose"]),
];

/// clap's own flags, which every command has.
const CLAP_FLAGS: &[&str] = &["--help", "--version"];

/// `kiln run` flags (but the global ones, whose cases are in
/// [`BUILD_FLAGS`]) → the spellings a case may use and the cases.
const RUN_FLAGS: &[(&str, &[&str], &[&str])] = &[
    (
        "--ca-cert",
        &["--ca-cert"],
        &["tests/run.rs::run_pulls_through_its_registry_flags"],
    ),
    (
        "--entrypoint",
        &["--entrypoint"],
        &["tests/run.rs::image_cmd_entrypoint_and_overrides"],
    ),
    (
        "--insecure-registry",
        &["--insecure-registry"],
        &["tests/run.rs::run_pulls_through_its_registry_flags"],
    ),
    (
        "--env",
        &["-e", "--env"],
        &["tests/run.rs::image_env_workdir_user_and_their_flags"],
    ),
    (
        "--hostname",
        &["-h", "--hostname"],
        &[
            "tests/run.rs::pid_1_hostname_and_exit_code",
            "tests/run.rs::image_env_workdir_user_and_their_flags",
        ],
    ),
    (
        "--interactive",
        &["-i", "--interactive"],
        &["tests/run.rs::stdin_only_with_interactive_and_a_terminal_with_tty"],
    ),
    (
        "--pull",
        &["--pull"],
        &["tests/run.rs::run_pulls_a_missing_image_as_docker_run_does"],
    ),
    (
        "--memory",
        &["-m", "--memory"],
        &[
            "tests/security/limits.rs::memory_flag_on_build_and_run",
            "tests/security/limits.rs::nonsense_limits_are_refused",
        ],
    ),
    (
        "--network",
        &["--network"],
        &["tests/run.rs::network_none_shows_only_loopback"],
    ),
    (
        "--pids-limit",
        &["--pids-limit"],
        &["tests/security/limits.rs::pids_limit_flag_on_build_and_run"],
    ),
    (
        "--platform",
        &["--platform", "DOCKER_DEFAULT_PLATFORM"],
        &[
            "tests/multiplatform.rs::run_of_a_foreign_platform_goes_through_the_emulator",
            "tests/images.rs::a_platform_asked_for_is_never_another_platforms_image",
        ],
    ),
    // Always what kiln does (it keeps no stopped container): the case
    // leaves no container and no cgroup behind.
    (
        "--rm",
        &["--rm"],
        &["tests/security/limits.rs::no_cgroup_is_left_behind"],
    ),
    (
        "--security-opt",
        &["--security-opt"],
        &["tests/run.rs::seccomp_unconfined_turns_the_profile_off"],
    ),
    (
        "--timeout",
        &["--timeout"],
        &["tests/run.rs::timeout_kills_the_container"],
    ),
    (
        "--tty",
        &["-t", "--tty"],
        &["tests/run.rs::stdin_only_with_interactive_and_a_terminal_with_tty"],
    ),
    (
        "--user",
        &["-u", "--user"],
        &["tests/run.rs::image_env_workdir_user_and_their_flags"],
    ),
    (
        "--volume",
        &["-v", "--volume"],
        &["tests/run.rs::volumes_are_read_only_when_asked"],
    ),
    (
        "--workdir",
        &["-w", "--workdir"],
        &["tests/run.rs::image_env_workdir_user_and_their_flags"],
    ),
];

/// (instruction, flag) → the cases.
const INSTRUCTION_FLAGS: &[(&str, &str, &[&str])] = &[
    (
        "FROM",
        "platform",
        &["tests/build_platform.rs::build_platform_stage_and_target_stage_in_one_build"],
    ),
    (
        "ADD",
        "chown",
        &[
            "tests/options.rs::add_chmod_unpack_exclude_chown",
            "testdata/builder/build/add-archives",
        ],
    ),
    (
        "ADD",
        "chmod",
        &["tests/options.rs::add_chmod_unpack_exclude_chown"],
    ),
    (
        "ADD",
        "link",
        &["tests/build.rs::copy_link_does_not_follow_symlinks_of_the_base"],
    ),
    (
        "ADD",
        "keep-git-dir",
        &["builder/tests/solve.rs::add_git_repository"],
    ),
    (
        "ADD",
        "checksum",
        &["tests/build.rs::add_url_with_checksum"],
    ),
    (
        "ADD",
        "unpack",
        &["tests/options.rs::add_chmod_unpack_exclude_chown"],
    ),
    (
        "ADD",
        "exclude",
        &["tests/options.rs::add_chmod_unpack_exclude_chown"],
    ),
    ("COPY", "chown", &["testdata/builder/copy/chown-chmod"]),
    (
        "COPY",
        "from",
        &[
            "testdata/builder/copy/from-stage",
            "testdata/builder/build/copy-from-image",
        ],
    ),
    ("COPY", "chmod", &["testdata/builder/copy/chown-chmod"]),
    (
        "COPY",
        "link",
        &["tests/build.rs::copy_link_does_not_follow_symlinks_of_the_base"],
    ),
    (
        "COPY",
        "exclude",
        &["testdata/builder/copy/exclude-and-hardlinks"],
    ),
    ("COPY", "parents", &["testdata/builder/copy/parents"]),
    (
        "RUN",
        "mount",
        &["builder/tests/solve.rs::run_mounts_bind_tmpfs_secret_cache"],
    ),
    (
        "RUN",
        "network",
        &[
            "tests/build.rs::network_none_leaves_only_loopback",
            "tests/build.rs::run_network_is_private_by_default_and_host_when_asked",
            "tests/options.rs::entitlements_insecure_and_host_network",
        ],
    ),
    (
        "RUN",
        "security",
        &["tests/options.rs::entitlements_insecure_and_host_network"],
    ),
    ("RUN", "device", &["testdata/check/plan-error-device"]),
    (
        "HEALTHCHECK",
        "interval",
        &["tests/options.rs::healthcheck_flags_set_the_config"],
    ),
    (
        "HEALTHCHECK",
        "timeout",
        &["tests/options.rs::healthcheck_flags_set_the_config"],
    ),
    (
        "HEALTHCHECK",
        "start-period",
        &["tests/options.rs::healthcheck_flags_set_the_config"],
    ),
    (
        "HEALTHCHECK",
        "start-interval",
        &["tests/options.rs::healthcheck_flags_set_the_config"],
    ),
    (
        "HEALTHCHECK",
        "retries",
        &["tests/options.rs::healthcheck_flags_set_the_config"],
    ),
];

/// `--mount` options and `type=` values → the cases.
const MOUNT_OPTIONS: &[(&str, &[&str])] = &[
    ("type", &["builder/tests/solve.rs::run_mounts_bind_tmpfs_secret_cache"]),
    ("type=bind", &["builder/tests/solve.rs::run_mounts_bind_tmpfs_secret_cache"]),
    ("type=cache", &["builder/tests/solve.rs::run_mounts_bind_tmpfs_secret_cache", "tests/options.rs::cache_mount_owner_and_mode"]),
    ("type=tmpfs", &["tests/options.rs::tmpfs_mount_size_and_mode"]),
    ("type=secret", &["tests/options.rs::secret_mounts_env_mode_owner_and_flag_forms"]),
    ("type=ssh", &["builder/tests/solve.rs::run_mount_ssh_reaches_the_forwarded_agent", "tests/build.rs::ssh_flag_forwards_agents_to_run_mounts"]),
    ("from", &["builder/tests/solve.rs::run_mounts_from_an_image"]),
    ("source", &["builder/tests/solve.rs::run_mounts_bind_tmpfs_secret_cache"]),
    ("src", &["tests/options.rs::mount_option_spellings"]),
    ("target", &["builder/tests/solve.rs::run_mounts_bind_tmpfs_secret_cache"]),
    ("dst", &["tests/options.rs::mount_option_spellings"]),
    ("destination", &["tests/options.rs::mount_option_spellings"]),
    ("readonly", &["tests/options.rs::mount_option_spellings"]),
    ("ro", &["tests/options.rs::mount_option_spellings"]),
    ("rw", &["tests/options.rs::mount_option_spellings", "builder/tests/solve.rs::writable_bind_mounts_change_neither_the_context_nor_a_snapshot"]),
    ("readwrite", &["tests/options.rs::mount_option_spellings"]),
    ("id", &["tests/options.rs::secret_mounts_env_mode_owner_and_flag_forms", "tests/options.rs::cache_mount_owner_and_mode"]),
    ("sharing", &["tests/options.rs::cache_mount_sharing_modes_across_processes"]),
    ("required", &["tests/options.rs::secret_flag_defaults_and_required", "builder/tests/solve.rs::run_mount_ssh_reaches_the_forwarded_agent"]),
    ("size", &["tests/options.rs::tmpfs_mount_size_and_mode"]),
    ("mode", &["tests/options.rs::cache_mount_owner_and_mode", "tests/options.rs::secret_mounts_env_mode_owner_and_flag_forms"]),
    ("uid", &["tests/options.rs::cache_mount_owner_and_mode", "tests/options.rs::secret_mounts_env_mode_owner_and_flag_forms"]),
    ("gid", &["tests/options.rs::cache_mount_owner_and_mode", "tests/options.rs::secret_mounts_env_mode_owner_and_flag_forms"]),
    ("env", &["tests/options.rs::secret_mounts_env_mode_owner_and_flag_forms"]),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text a case shows its option in: a test function's body, or the
/// Dockerfile (or copy `ops`) of a case directory that also holds what is
/// expected of it.
fn case_text(case: &str) -> Result<String, String> {
    if let Some((file, function)) = case.split_once("::") {
        let source = std::fs::read_to_string(repo().join(file))
            .map_err(|e| format!("{case}: reading {file}: {e}"))?;
        let start = source
            .find(&format!("\nfn {function}("))
            .ok_or_else(|| format!("{case}: no fn {function} in {file}"))?;
        let before = &source[..start];
        if !before.trim_end().ends_with("]")
            || !before[before.len().saturating_sub(200)..].contains("#[test]")
        {
            return Err(format!("{case}: fn {function} is not a #[test]"));
        }
        let end = source[start..]
            .find("\n}\n")
            .map_or(source.len(), |e| start + e);
        return Ok(body_with_helpers(&source, &source[start..end]));
    }
    let dir = repo().join(case);
    let mut text = String::new();
    for name in ["Dockerfile", "ops"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(name)) {
            text.push_str(&t);
        }
    }
    let expected = std::fs::read_dir(&dir)
        .map_err(|e| format!("{case}: {e}"))?
        .flatten()
        .any(|e| !matches!(e.file_name().to_str(), Some("Dockerfile" | "ops")));
    if text.is_empty() || !expected {
        return Err(format!(
            "{case}: not a case directory (a Dockerfile or ops, and what is expected)"
        ));
    }
    Ok(text)
}

/// A test's body, with the bodies of the same file's functions it calls
/// (a test that runs its case through a helper, as `link_case`).
fn body_with_helpers(source: &str, body: &str) -> String {
    let mut text = body.to_string();
    for (at, _) in source.match_indices("\nfn ") {
        let name_end = source[at + 4..].find('(').map_or(at + 4, |e| at + 4 + e);
        let name = &source[at + 4..name_end];
        if body.contains(&format!("{name}(")) && !body.starts_with(&format!("\nfn {name}(")) {
            let end = source[at..].find("\n}\n").map_or(source.len(), |e| at + e);
            text.push_str(&source[at..end]);
        }
    }
    text
}

/// The `--long` flags `kiln build --help` lists.
fn build_help_flags() -> Vec<String> {
    help_flags(&["build"])
}

/// The `--long` flags `kiln ARGS… --help` lists.
fn help_flags(command: &[&str]) -> Vec<String> {
    let out = common::run_ok(common::kiln_command().args(command).arg("--help"));
    let mut flags: Vec<String> = out
        .lines()
        .filter_map(|line| {
            // clap indents a flag's line by 2 (short form) or 6 spaces and its
            // description by 10: a description that starts with `--` is no flag.
            let indent = line.len() - line.trim_start().len();
            if indent > 6 {
                return None;
            }
            let line = line.trim_start();
            let line = line
                .strip_prefix('-')
                .filter(|l| !l.starts_with('-'))
                .map_or(line, |l| l.split_once(", ").map_or(line, |(_, rest)| rest));
            let flag = line.strip_prefix("--")?;
            let end = flag
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(flag.len());
            Some(format!("--{}", &flag[..end]))
        })
        .collect();
    flags.sort();
    flags.dedup();
    flags
}

fn check_cases(option: &str, cases: &[&str], shows: impl Fn(&str) -> bool) -> Vec<String> {
    if cases.is_empty() {
        return vec![format!("{option}: no case")];
    }
    cases
        .iter()
        .filter_map(|case| match case_text(case) {
            Err(e) => Some(e),
            Ok(text) if !shows(&text) => Some(format!("{option}: {case} does not use it")),
            Ok(_) => None,
        })
        .collect()
}

#[test]
fn every_build_flag_has_a_case() {
    let listed: Vec<String> = build_help_flags()
        .into_iter()
        .filter(|f| !CLAP_FLAGS.contains(&f.as_str()))
        .collect();
    assert!(
        listed.len() > 20,
        "could not read kiln build --help: {listed:?}"
    );
    let problems = flag_table_problems("kiln build", &listed, BUILD_FLAGS);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The global flags `kiln run --help` lists too are the build's, with
/// their cases in [`BUILD_FLAGS`] (checked above).
#[test]
fn every_run_flag_has_a_case() {
    let global = help_flags(&[]);
    let listed: Vec<String> = help_flags(&["run"])
        .into_iter()
        .filter(|f| !CLAP_FLAGS.contains(&f.as_str()) && !global.contains(f))
        .collect();
    assert!(
        listed.len() > 10,
        "could not read kiln run --help: {listed:?}"
    );
    let problems = flag_table_problems("kiln run", &listed, RUN_FLAGS);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What is wrong between the flags `command` takes (`listed`) and its
/// table: a flag with no row, a row for no flag, a case that does not use
/// its flag (in one of its spellings, quoted as an argument or spaced in a
/// command line, or an environment variable's name).
fn flag_table_problems(
    command: &str,
    listed: &[String],
    table: &[(&str, &[&str], &[&str])],
) -> Vec<String> {
    let mut problems = Vec::new();
    for flag in listed {
        if !table.iter().any(|(f, _, _)| f == flag) {
            problems.push(format!(
                "{flag}: {command} takes it, and no case shows its effect"
            ));
        }
    }
    let quoted = |text: &str, s: &str| {
        text.contains(&format!("\"{s}\""))
            || text.contains(&format!("\"{s}="))
            || text.contains(&format!("\"{s} "))
            || text.contains(&format!(" {s} "))
            || (s.starts_with("KILN_") && text.contains(s))
    };
    for (flag, spellings, cases) in table {
        if !listed.contains(&flag.to_string()) {
            problems.push(format!("{flag}: in the table, not a flag of {command}"));
        }
        problems.extend(check_cases(flag, cases, |text| {
            spellings.iter().any(|s| quoted(text, s))
        }));
    }
    problems
}

#[test]
fn every_instruction_flag_has_a_case() {
    let mut problems = Vec::new();
    for (instruction, flags) in kiln_parser::instructions::INSTRUCTION_FLAGS {
        for (flag, _) in *flags {
            if !INSTRUCTION_FLAGS
                .iter()
                .any(|(i, f, _)| i == instruction && f == flag)
            {
                problems.push(format!("{instruction} --{flag}: no case shows its effect"));
            }
        }
    }
    for (instruction, flag, cases) in INSTRUCTION_FLAGS {
        let accepted = kiln_parser::instructions::INSTRUCTION_FLAGS
            .iter()
            .any(|(i, flags)| i == instruction && flags.iter().any(|(f, _)| f == flag));
        if !accepted {
            problems.push(format!(
                "{instruction} --{flag}: in the table, not accepted by the parser"
            ));
        }
        problems.extend(check_cases(
            &format!("{instruction} --{flag}"),
            cases,
            |text| text.contains(instruction) && text.contains(&format!("--{flag}")),
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_mount_option_and_type_has_a_case() {
    use kiln_parser::mount::{MountType, ALL_KEYS};
    let mut wanted: Vec<String> = ALL_KEYS.iter().map(|k| k.to_string()).collect();
    wanted.extend(
        MountType::ALL
            .iter()
            .map(|t| format!("type={}", t.as_str())),
    );
    let mut problems = Vec::new();
    for option in &wanted {
        if !MOUNT_OPTIONS.iter().any(|(o, _)| o == option) {
            problems.push(format!("--mount {option}: no case shows its effect"));
        }
    }
    for (option, cases) in MOUNT_OPTIONS {
        if !wanted.contains(&option.to_string()) {
            problems.push(format!(
                "--mount {option}: in the table, not accepted by the parser"
            ));
        }
        // On a line with a --mount: `key=`, `key,`, or the key ending the
        // option list.
        let on_a_mount_line = |text: &str| {
            text.lines()
                .any(|line| line.contains("--mount") && mount_line_has(line, option))
        };
        problems.extend(check_cases(
            &format!("--mount {option}"),
            cases,
            on_a_mount_line,
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Whether a `--mount=` on this line names `option` (a key, or a
/// `type=value`).
fn mount_line_has(line: &str, option: &str) -> bool {
    line.split("--mount=").skip(1).any(|spec| {
        let spec = spec.split_whitespace().next().unwrap_or("");
        spec.trim_matches(|c| c == '\'' || c == '"')
            .split(',')
            .any(|field| {
                let field = field.trim_matches(|c| c == '\'' || c == '"');
                field == option
                    || (!option.contains('=') && field.starts_with(&format!("{option}=")))
            })
    })
}

#[test]
fn mount_lines_are_read_as_the_parser_reads_them() {
    assert!(mount_line_has(
        "RUN --mount=type=bind,src=d,dst=/m true",
        "src"
    ));
    assert!(mount_line_has(
        "RUN --mount=type=cache,target=/c,ro true",
        "ro"
    ));
    assert!(!mount_line_has(
        "RUN --mount=type=cache,target=/c,ro true",
        "rw"
    ));
    assert!(mount_line_has(
        "RUN --mount=type=tmpfs,target=/t true",
        "type=tmpfs"
    ));
    assert!(!mount_line_has(
        "RUN --mount=type=tmpfs,target=/t true",
        "type=cache"
    ));
}
