//! CI job-end webhook payloads (GitHub `workflow_job` / `workflow_run`, GitLab job and pipeline
//! events), read after the signature verifies: the first byte picks the GitHub event header.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mayfly_proto::webhook::{self, Notice};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let event = ["workflow_job", "workflow_run", "ping", "push"][usize::from(pick % 4)];
    for notice in [webhook::github(event, body), webhook::gitlab(body)] {
        if let Ok(Notice::End(e)) = notice {
            // What reaches the store is bounded and printable.
            assert!(!e.project.is_empty() && e.project.len() <= 512);
            assert!(!e.project.chars().any(char::is_control));
            assert!(e.run.bytes().all(|b| b.is_ascii_digit()));
        }
    }
});
