//! The core against the reference model: random sequences of connect, join
//! (with and without `since`), leave, send, typing, presence queries, direct
//! messages, disconnects, slow consumers, pongs and time passing, across
//! several users and rooms. After every step each connection must have
//! received exactly what the model predicts (who receives each message, acks
//! and errors exactly once per request id, presence), offsets must only grow,
//! and the hub's own invariants must hold.
//!
//! The run is seeded. A failure prints the seed and the command that replays
//! it: `ROOMHUB_MODEL_SEED=<seed> cargo test -p roomhub-sim --test model`.
//! `ROOMHUB_MODEL_CASES` sets how many scenarios run (default 256).

use proptest::test_runner::TestError;
use roomhub_sim::ops::{check_scenario, scenario_strategy};
use roomhub_sim::seeded::{env_u64, runner};

const DEFAULT_SEED: u64 = 0x726f_6f6d_6875_6221;

#[test]
fn core_matches_the_reference_model() {
    let seed = env_u64("ROOMHUB_MODEL_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("ROOMHUB_MODEL_CASES").unwrap_or(256) as u32;
    let mut runner = runner(seed, cases);
    let delivered = std::cell::Cell::new(0usize);
    let result = runner.run(&scenario_strategy(160), |ops| {
        let stats = check_scenario(&ops).map_err(proptest::test_runner::TestCaseError::fail)?;
        delivered.set(delivered.get() + stats.messages);
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, ops)) => panic!(
            "model test failed with seed {seed:#x}\n\
             replay: ROOMHUB_MODEL_SEED={seed:#x} cargo test -p roomhub-sim --test model\n\
             minimal scenario ({} steps): {ops:#?}\n{reason}",
            ops.len()
        ),
        Err(TestError::Abort(reason)) => panic!("model test aborted (seed {seed:#x}): {reason}"),
    }
    // The scenarios must actually deliver: a generator that drifted into
    // no-ops would pass every check above.
    let floor = 2 * cases as usize;
    assert!(
        delivered.get() >= floor,
        "only {} messages delivered in {cases} scenarios",
        delivered.get()
    );
}

#[test]
fn the_model_sends_messages_to_the_other_members_only() {
    use roomhub_sim::model::{Model, Seen};
    let mut model = Model::new(2, 60_000);
    model.connect(1, "ana");
    model.connect(2, "ben");
    model.join(1, "r0", None, "a");
    model.join(2, "r0", None, "b");
    let expected = model.send(1, "r0", "hi", "c");
    assert_eq!(
        expected.get(&2).map(Vec::as_slice),
        Some(
            [Seen::Message {
                room: "r0".into(),
                offset: 1,
                sender: "ana".into(),
                content: "hi".into()
            }]
            .as_slice()
        )
    );
    assert!(
        !expected.contains_key(&1) || expected[&1].iter().all(|s| matches!(s, Seen::Ack { .. }))
    );
}
