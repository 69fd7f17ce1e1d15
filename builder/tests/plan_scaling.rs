//! Planning does work linear in the Dockerfile's size: ENV lines used to
//! cost O(N²) (every expansion copied the whole environment; `--dry-run`
//! of 20,000 ENV lines took 24 s where 20,000 LABELs took 0.06 s).
//!
//! Measured without a clock: a counting global allocator adds up the bytes
//! `plan` allocates for N and for 2N lines. Linear work doubles them,
//! quadratic work quadruples them. (This file holds a single test, so no
//! other test allocates while it counts.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_builder::plan::{plan, BuildOptions, OfflineResolver};

struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a plain atomic add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `layout` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes `plan` allocates for `text` (parsing not counted).
fn planning_bytes(text: &str) -> u64 {
    let ast = kiln_parser::parse(text, "Dockerfile").unwrap();
    let typed = kiln_parser::instructions::from_ast(&ast).unwrap();
    let opts = BuildOptions::default();
    let before = ALLOCATED.load(Ordering::Relaxed);
    let planned = plan(&typed, &opts, &OfflineResolver).unwrap();
    let used = ALLOCATED.load(Ordering::Relaxed) - before;
    drop(planned);
    used
}

/// A stage of `n` lines made by `line(i)`, then a RUN that sees them.
fn dockerfile(n: usize, line: impl Fn(usize) -> String) -> String {
    let mut text = String::from("FROM scratch\nENV V0=start\n");
    for i in 1..=n {
        text.push_str(&line(i));
        text.push('\n');
    }
    text.push_str("RUN echo $V1\n");
    text
}

#[test]
fn env_lines_are_planned_in_linear_work() {
    let env = |i: usize| format!("ENV V{i}=value-$V0");
    let label = |i: usize| format!("LABEL l{i}=value-$V0");
    let (small, large) = (2_000, 4_000);
    let env_small = planning_bytes(&dockerfile(small, env));
    let env_large = planning_bytes(&dockerfile(large, env));
    let label_small = planning_bytes(&dockerfile(small, label));
    let label_large = planning_bytes(&dockerfile(large, label));
    let ratio = |a: u64, b: u64| b as f64 / a as f64;
    // LABEL, always linear, is the yardstick: twice the lines, about twice
    // the bytes. Quadratic ENV planning gave about 4.
    assert!(
        ratio(label_small, label_large) < 2.5,
        "LABEL: {label_small} -> {label_large} bytes"
    );
    assert!(
        ratio(env_small, env_large) < 2.5,
        "ENV: {small} lines allocated {env_small} bytes, {large} lines {env_large} bytes"
    );
}
