//! `kiln build --dry-run`'s views of a plan: text (stages, steps, cache
//! hits, waves of stages that run in parallel), JSON, Graphviz and Mermaid.

use kiln_builder::plan::{Plan, StepKind};
use kiln_layers::{Digest, Store};

use crate::cmd::build::PlanFormat;

/// The step graph as Graphviz or Mermaid text: each needed stage's steps in
/// order, from its base (image, scratch or stage), with COPY --from and RUN
/// --mount=from edges between stages.
fn plan_graph(planned: &Plan, dot: bool, hit: &dyn Fn(&Option<Digest>) -> bool) -> String {
    use kiln_builder::plan::{BaseSource, CopyFrom};
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut nodes: Vec<(String, String)> = Vec::new();
    let mut edges: Vec<(String, String)> = Vec::new();
    let stage_out = |i: usize| -> String {
        let s = &planned.stages[i];
        match s.steps.last() {
            Some(_) => format!("s{}_{}", i, s.steps.len() - 1),
            None => format!("s{i}_base"),
        }
    };
    for &i in &planned.order {
        let s = &planned.stages[i];
        let base_id = format!("s{i}_base");
        let base_label = match &s.base {
            BaseSource::Scratch => "FROM scratch".to_string(),
            BaseSource::Image { reference, .. } => format!("FROM {reference}"),
            BaseSource::Stage(j) => format!("FROM stage {j}"),
            BaseSource::NamedContext { name, .. } => format!("FROM context {name}"),
        };
        nodes.push((base_id.clone(), base_label));
        if let BaseSource::Stage(j) = s.base {
            edges.push((stage_out(j), base_id.clone()));
        }
        let mut prev = base_id;
        for (n, st) in s.steps.iter().enumerate() {
            let id = format!("s{i}_{n}");
            let mark = if hit(&st.cache_key) { " (cached)" } else { "" };
            nodes.push((id.clone(), format!("{}: {}{mark}", st.line, st.instruction)));
            edges.push((prev.clone(), id.clone()));
            match &st.kind {
                StepKind::Copy(c) => {
                    if let CopyFrom::Stage(j) = c.from {
                        edges.push((stage_out(j), id.clone()));
                    }
                }
                StepKind::Run(r) => {
                    for j in r.mount_stages() {
                        edges.push((stage_out(j), id.clone()));
                    }
                }
                StepKind::Workdir(_) => {}
            }
            prev = id;
        }
    }
    let mut out = String::new();
    if dot {
        out.push_str("digraph plan {\n  rankdir=TB;\n  node [shape=box];\n");
        for (id, label) in &nodes {
            out.push_str(&format!("  {id} [label=\"{}\"];\n", quote(label)));
        }
        for (a, b) in &edges {
            out.push_str(&format!("  {a} -> {b};\n"));
        }
        out.push_str("}\n");
    } else {
        out.push_str("flowchart TD\n");
        for (id, label) in &nodes {
            out.push_str(&format!("  {id}[\"{}\"]\n", label.replace('"', "#quot;")));
        }
        for (a, b) in &edges {
            out.push_str(&format!("  {a} --> {b}\n"));
        }
    }
    out
}

pub(crate) fn print_plan(planned: &Plan, store: &Store, format: PlanFormat) -> anyhow::Result<()> {
    let hit = |key: &Option<Digest>| -> bool {
        key.as_ref()
            .and_then(|d| store.cache_get(d).ok().flatten())
            .is_some()
    };
    // Stages in waves: each wave's stages can run in parallel.
    let waves = planned.waves();
    match format {
        PlanFormat::Json => {
            let stages: Vec<serde_json::Value> = planned
                .stages
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "index": s.index,
                        "name": s.name,
                        "needed": s.needed,
                        "base": s.base,
                        "deps": s.deps,
                        "steps": s.steps.iter().map(|st| serde_json::json!({
                            "line": st.line,
                            "instruction": st.instruction,
                            "cache_key": st.cache_key,
                            "cached": hit(&st.cache_key),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let out = serde_json::json!({
                "target": planned.target,
                "stages": stages,
                "parallel": waves,
                "warnings": planned.warnings,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        PlanFormat::Dot | PlanFormat::Mermaid => {
            print!("{}", plan_graph(planned, format == PlanFormat::Dot, &hit));
        }
        PlanFormat::Text => {
            for s in &planned.stages {
                let label = s
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("stage-{}", s.index));
                if !s.needed {
                    println!(
                        "stage {} ({label}): skipped, the target does not need it",
                        s.index
                    );
                    continue;
                }
                let base = match &s.base {
                    kiln_builder::plan::BaseSource::Scratch => "scratch".to_string(),
                    kiln_builder::plan::BaseSource::Image { reference, .. } => {
                        reference.to_string()
                    }
                    kiln_builder::plan::BaseSource::Stage(i) => format!("stage {i}"),
                    kiln_builder::plan::BaseSource::NamedContext { name, .. } => {
                        format!("context {name}")
                    }
                };
                println!("stage {} ({label}) FROM {base}", s.index);
                for st in &s.steps {
                    let kind = match &st.kind {
                        StepKind::Run(_) => "run",
                        StepKind::Copy(_) => "copy",
                        StepKind::Workdir(_) => "mkdir",
                    };
                    println!(
                        "  line {:>3} {:<5} {:<6} {}",
                        st.line,
                        kind,
                        if hit(&st.cache_key) { "CACHED" } else { "" },
                        st.instruction
                    );
                }
            }
            for (i, wave) in waves.iter().enumerate() {
                println!(
                    "wave {}: {}",
                    i + 1,
                    wave.iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    Ok(())
}
