//! The CI platforms' job-end notices, read from their documented webhook payloads: GitHub's
//! `workflow_job` and `workflow_run` events, GitLab's job (`object_kind: "build"`) and pipeline
//! events. Only the fields naming which run (and job) ended are read; the rest of a payload is
//! ignored. Parsing checks shape only: the caller has verified the delivery's signature.

use serde::Deserialize;

/// The longest project path, run, attempt or job id accepted (GitLab paths run to a few
/// hundred characters; ids are integers).
const MAX_FIELD: usize = 512;

/// A CI run (or one job of it) that completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiEnd {
    /// `github` or `gitlab`.
    pub provider: &'static str,
    /// The repository (`owner/name`) or project path (`group/project`).
    pub project: String,
    /// GitHub `run_id`, GitLab `pipeline_id`.
    pub run: String,
    /// GitHub `run_attempt`; `None` for GitLab.
    pub attempt: Option<String>,
    /// The job (GitHub `workflow_job.id`, GitLab `build_id`); `None` when the whole run ended.
    pub job: Option<String>,
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A job or run completed: its leases end.
    End(CiEnd),
    /// Nothing to do (another event, or a job that has not finished); says which.
    Ignored(&'static str),
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not a JSON object of the documented shape.
    #[error("the payload is not a {0} event of the documented shape")]
    Shape(&'static str),
    /// A field that names the run is empty, too long or holds control characters.
    #[error("the payload's `{0}` is not a usable name")]
    BadField(&'static str),
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct WorkflowJob {
    id: u64,
    run_id: u64,
    /// Absent from older payloads: then every attempt's leases of the job end (job ids are
    /// unique across attempts anyway).
    run_attempt: Option<u64>,
}

#[derive(Deserialize)]
struct JobEvent {
    action: String,
    workflow_job: WorkflowJob,
    repository: Repository,
}

#[derive(Deserialize)]
struct WorkflowRun {
    id: u64,
    run_attempt: Option<u64>,
}

#[derive(Deserialize)]
struct RunEvent {
    action: String,
    workflow_run: WorkflowRun,
    repository: Repository,
}

fn name(field: &'static str, v: String) -> Result<String, PayloadError> {
    if v.is_empty() || v.len() > MAX_FIELD || v.chars().any(char::is_control) {
        return Err(PayloadError::BadField(field));
    }
    Ok(v)
}

/// A GitHub delivery of event `event` (the `X-GitHub-Event` header) with JSON `body`.
pub fn github(event: &str, body: &[u8]) -> Result<Notice, PayloadError> {
    match event {
        "workflow_job" => {
            let e: JobEvent =
                serde_json::from_slice(body).map_err(|_| PayloadError::Shape("workflow_job"))?;
            if e.action != "completed" {
                return Ok(Notice::Ignored("workflow_job not completed"));
            }
            Ok(Notice::End(CiEnd {
                provider: "github",
                project: name("repository.full_name", e.repository.full_name)?,
                run: e.workflow_job.run_id.to_string(),
                attempt: e.workflow_job.run_attempt.map(|a| a.to_string()),
                job: Some(e.workflow_job.id.to_string()),
            }))
        }
        "workflow_run" => {
            let e: RunEvent =
                serde_json::from_slice(body).map_err(|_| PayloadError::Shape("workflow_run"))?;
            if e.action != "completed" {
                return Ok(Notice::Ignored("workflow_run not completed"));
            }
            Ok(Notice::End(CiEnd {
                provider: "github",
                project: name("repository.full_name", e.repository.full_name)?,
                run: e.workflow_run.id.to_string(),
                attempt: e.workflow_run.run_attempt.map(|a| a.to_string()),
                job: None,
            }))
        }
        "ping" => Ok(Notice::Ignored("ping")),
        _ => Ok(Notice::Ignored("event not acted on")),
    }
}

#[derive(Deserialize)]
struct GitlabProject {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct GitlabKind {
    object_kind: String,
}

#[derive(Deserialize)]
struct GitlabJob {
    build_id: u64,
    build_status: String,
    pipeline_id: u64,
    project: GitlabProject,
}

#[derive(Deserialize)]
struct PipelineAttributes {
    id: u64,
    status: String,
}

#[derive(Deserialize)]
struct GitlabPipeline {
    object_attributes: PipelineAttributes,
    project: GitlabProject,
}

/// The statuses in which a GitLab job or pipeline has finished for good (a `manual` or
/// `created` job has not run yet; `running`, `pending` are under way).
fn finished(status: &str) -> bool {
    matches!(status, "success" | "failed" | "canceled" | "skipped")
}

/// A GitLab delivery with JSON `body` (the `object_kind` field says which event it is).
pub fn gitlab(body: &[u8]) -> Result<Notice, PayloadError> {
    let kind: GitlabKind =
        serde_json::from_slice(body).map_err(|_| PayloadError::Shape("GitLab"))?;
    match kind.object_kind.as_str() {
        "build" => {
            let e: GitlabJob =
                serde_json::from_slice(body).map_err(|_| PayloadError::Shape("job"))?;
            if !finished(&e.build_status) {
                return Ok(Notice::Ignored("job not finished"));
            }
            Ok(Notice::End(CiEnd {
                provider: "gitlab",
                project: name("project.path_with_namespace", e.project.path_with_namespace)?,
                run: e.pipeline_id.to_string(),
                attempt: None,
                job: Some(e.build_id.to_string()),
            }))
        }
        "pipeline" => {
            let e: GitlabPipeline =
                serde_json::from_slice(body).map_err(|_| PayloadError::Shape("pipeline"))?;
            if !finished(&e.object_attributes.status) {
                return Ok(Notice::Ignored("pipeline not finished"));
            }
            Ok(Notice::End(CiEnd {
                provider: "gitlab",
                project: name("project.path_with_namespace", e.project.path_with_namespace)?,
                run: e.object_attributes.id.to_string(),
                attempt: None,
                job: None,
            }))
        }
        _ => Ok(Notice::Ignored("event not acted on")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_github_job_names_its_run_attempt_and_job() {
        let body = br#"{"action":"completed","workflow_job":{"id":29679449,"run_id":10371311,
            "run_attempt":2,"status":"completed","conclusion":"success"},
            "repository":{"full_name":"octo-org/example-workflow"}}"#;
        assert_eq!(
            github("workflow_job", body).unwrap(),
            Notice::End(CiEnd {
                provider: "github",
                project: "octo-org/example-workflow".into(),
                run: "10371311".into(),
                attempt: Some("2".into()),
                job: Some("29679449".into()),
            })
        );
        let queued = br#"{"action":"queued","workflow_job":{"id":1,"run_id":2,"run_attempt":1},
            "repository":{"full_name":"o/r"}}"#;
        assert!(matches!(
            github("workflow_job", queued),
            Ok(Notice::Ignored(_))
        ));
        assert!(matches!(github("push", b"{}"), Ok(Notice::Ignored(_))));
        assert_eq!(
            github("workflow_job", b"{\"action\":\"completed\"}"),
            Err(PayloadError::Shape("workflow_job"))
        );
        let empty = br#"{"action":"completed","workflow_job":{"id":1,"run_id":2,"run_attempt":1},
            "repository":{"full_name":""}}"#;
        assert_eq!(
            github("workflow_job", empty),
            Err(PayloadError::BadField("repository.full_name"))
        );
    }

    #[test]
    fn a_completed_github_run_ends_every_job_of_its_attempt() {
        let body = br#"{"action":"completed","workflow_run":{"id":30433642,"run_attempt":1,
            "status":"completed"},"repository":{"full_name":"octo-org/r"}}"#;
        let Ok(Notice::End(e)) = github("workflow_run", body) else {
            panic!("not an end")
        };
        assert_eq!((e.run.as_str(), e.job), ("30433642", None));
        assert_eq!(e.attempt.as_deref(), Some("1"));
    }

    #[test]
    fn gitlab_jobs_and_pipelines_end_when_finished() {
        let job = br#"{"object_kind":"build","build_id":1977,"build_status":"success",
            "pipeline_id":2366,"project_name":"gitlab-org/gitlab-test",
            "project":{"id":380,"path_with_namespace":"gitlab-org/gitlab-test"}}"#;
        assert_eq!(
            gitlab(job).unwrap(),
            Notice::End(CiEnd {
                provider: "gitlab",
                project: "gitlab-org/gitlab-test".into(),
                run: "2366".into(),
                attempt: None,
                job: Some("1977".into()),
            })
        );
        let running = br#"{"object_kind":"build","build_id":1,"build_status":"running",
            "pipeline_id":2,"project":{"path_with_namespace":"g/p"}}"#;
        assert!(matches!(gitlab(running), Ok(Notice::Ignored(_))));
        let pipeline = br#"{"object_kind":"pipeline","object_attributes":{"id":31,
            "status":"failed"},"project":{"path_with_namespace":"g/p"}}"#;
        let Ok(Notice::End(e)) = gitlab(pipeline) else {
            panic!("not an end")
        };
        assert_eq!((e.run.as_str(), e.job), ("31", None));
        assert!(matches!(
            gitlab(br#"{"object_kind":"push"}"#),
            Ok(Notice::Ignored(_))
        ));
        assert_eq!(gitlab(b"[]"), Err(PayloadError::Shape("GitLab")));
    }
}
