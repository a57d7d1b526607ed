//! The scheduler as a library: at most one accelerator stage at a time on a
//! device, while CPU stages run alongside up to `jobs`.

use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection};
use distillery_engine::progress::{NoProgress, Progress};
use distillery_engine::run::{self, RunObserver, RunOptions, StageReport};
use distillery_engine::{Device, OpRegistry, Store};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
struct Timeline {
    events: Mutex<Vec<(String, bool, Instant)>>,
}

impl RunObserver for Timeline {
    fn started(&self, stage: &str, _key: &str) -> Box<dyn Progress> {
        self.events
            .lock()
            .unwrap()
            .push((stage.to_string(), true, Instant::now()));
        Box::new(NoProgress)
    }
    fn finished(&self, report: &StageReport) {
        self.events
            .lock()
            .unwrap()
            .push((report.name.clone(), false, Instant::now()));
    }
}

impl Timeline {
    fn interval(&self, stage: &str) -> (Instant, Instant) {
        let events = self.events.lock().unwrap();
        let start = events.iter().find(|e| e.0 == stage && e.1).unwrap().2;
        let end = events.iter().find(|e| e.0 == stage && !e.1).unwrap().2;
        (start, end)
    }
    fn overlap(&self, a: &str, b: &str) -> bool {
        let (a0, a1) = self.interval(a);
        let (b0, b1) = self.interval(b);
        a0 < b1 && b0 < a1
    }
}

fn run_recipe(source: &str, device: Device) -> Timeline {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yaml");
    std::fs::write(&path, source).unwrap();
    let mut registry = OpRegistry::new();
    distillery_engine::testing::register(&mut registry);
    let pipeline = distillery_engine::load(&path, &registry).unwrap();
    let store = Store::open(&dir.path().join(".distillery")).unwrap();
    let plan = plan::plan(
        &pipeline,
        &store,
        &FileHasher::uncached(),
        &Selection::default(),
    )
    .unwrap();
    let timeline = Timeline::default();
    let report = run::execute(
        &pipeline,
        &plan,
        &store,
        &RunOptions::local(4, device),
        &timeline,
    )
    .unwrap();
    assert!(report.succeeded(), "{report:?}");
    timeline
}

const RECIPE: &str = "\
stages:
  gpu1: { op: count, with: { steps: 6, step_ms: 25, accelerator: true } }
  gpu2: { op: count, with: { steps: 7, step_ms: 25, accelerator: true } }
  cpu1: { op: count, with: { steps: 8, step_ms: 25 } }
  cpu2: { op: count, with: { steps: 9, step_ms: 25 } }
";

#[test]
fn one_accelerator_stage_at_a_time_on_a_device() {
    let t = run_recipe(RECIPE, Device::Cuda);
    assert!(
        !t.overlap("gpu1", "gpu2"),
        "two accelerator stages overlapped"
    );
    assert!(t.overlap("cpu1", "cpu2"), "CPU stages should run alongside");
}

#[test]
fn accelerator_stages_run_freely_on_the_cpu() {
    let t = run_recipe(RECIPE, Device::Cpu);
    assert!(t.overlap("gpu1", "gpu2"));
}
