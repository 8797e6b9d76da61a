//! The three-node cluster as containers under docker compose (`deploy/`): built from the
//! local binaries, on a private network, with real container faults — SIGKILL of a node
//! and `docker pause` of another for longer than an election timeout. Skips, saying why,
//! where no Docker engine or compose tool is available.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tributary_tests::{assert_contains_acked, binary, free_addr, Remote};

/// `docker compose` (plugin) or `docker-compose` (standalone), whichever works.
fn compose_tool() -> Option<Vec<String>> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["docker", "compose"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if works(&["docker-compose"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

fn docker_ready() -> Result<Vec<String>, String> {
    let info = Command::new("docker")
        .arg("info")
        .output()
        .map_err(|e| format!("docker is not installed ({e})"))?;
    if !info.status.success() {
        return Err(format!(
            "the Docker engine does not answer: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    compose_tool().ok_or_else(|| "neither `docker compose` nor `docker-compose` works".into())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A compose project; `down -v` on drop.
struct Project {
    tool: Vec<String>,
    name: String,
    ports: [u16; 3],
    image: String,
}

impl Project {
    fn run(&self, args: &[&str]) -> Output {
        let root = workspace_root();
        let output = Command::new(&self.tool[0])
            .args(&self.tool[1..])
            .args(["-p", &self.name, "-f"])
            .arg(root.join("deploy/docker-compose.yml"))
            .args(args)
            .env("TRIBUTARY_IMAGE", &self.image)
            .env("TRIBUTARY_PORT_1", self.ports[0].to_string())
            .env("TRIBUTARY_PORT_2", self.ports[1].to_string())
            .env("TRIBUTARY_PORT_3", self.ports[2].to_string())
            .output()
            .expect("run compose");
        assert!(
            output.status.success(),
            "compose {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn container(&self, service: &str) -> String {
        let out = self.run(&["ps", "-q", service]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn node(&self, id: usize) -> Remote {
        Remote {
            endpoint: format!("http://127.0.0.1:{}", self.ports[id - 1]),
        }
    }

    fn logs(&self) -> String {
        let out = self.run(&["logs", "--no-color", "--tail", "40"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let root = workspace_root();
        let _ = Command::new(&self.tool[0])
            .args(&self.tool[1..])
            .args(["-p", &self.name, "-f"])
            .arg(root.join("deploy/docker-compose.yml"))
            .args(["down", "-v", "--timeout", "5"])
            .env("TRIBUTARY_IMAGE", &self.image)
            .output();
    }
}

fn docker(args: &[&str]) {
    let status = Command::new("docker").args(args).status().expect("docker");
    assert!(status.success(), "docker {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_survives_a_killed_and_a_paused_node() {
    let tool = match docker_ready() {
        Ok(tool) => tool,
        Err(why) => {
            eprintln!("SKIPPED compose_cluster_survives_a_killed_and_a_paused_node: {why}");
            return;
        }
    };
    let bin_dir = binary("tributary").parent().expect("bin dir").to_path_buf();
    let image = format!("tributary-test:{}", std::process::id());
    let built = Command::new(workspace_root().join("deploy/build-image.sh"))
        .arg(&bin_dir)
        .arg(&image)
        .output()
        .expect("build image");
    assert!(
        built.status.success(),
        "deploy/build-image.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let project = Project {
        tool,
        name: format!("tributary-test-{}", std::process::id()),
        ports: [free_addr().port(), free_addr().port(), free_addr().port()],
        image: image.clone(),
    };
    project.run(&["up", "-d"]);
    for id in 1..=3 {
        project.node(id).wait_serving().await;
    }

    project.node(1).create_stream("compose", 3).await;
    let mut acked = Vec::new();
    for i in 0..30usize {
        let data = format!("a-{i}");
        let (shard, seq) = project
            .node(i % 3 + 1)
            .put_acked("compose", &format!("k{}", i % 5), &data)
            .await;
        acked.push((shard, seq, data));
    }

    // SIGKILL node 2's container; the other two keep taking writes.
    project.run(&["kill", "node2"]);
    for i in 30..60usize {
        let data = format!("a-{i}");
        let via = if i % 2 == 0 { 1 } else { 3 };
        let (shard, seq) = project
            .node(via)
            .put_acked("compose", &format!("k{}", i % 5), &data)
            .await;
        acked.push((shard, seq, data));
    }
    assert_contains_acked(&project.node(3).read_all("compose").await, &acked, "node 3");
    project.run(&["start", "node2"]);
    project.node(2).wait_serving().await;
    let read = project.node(2).read_all("compose").await;
    assert_contains_acked(&read, &acked, "restarted node 2");

    // Pause node 1 for longer than an election timeout while writing through node 3;
    // after it resumes, it must not serve its stale tip as current.
    let paused = project.container("node1");
    docker(&["pause", &paused]);
    for i in 60..80usize {
        let data = format!("a-{i}");
        let (shard, seq) = project
            .node(3)
            .put_acked("compose", &format!("k{}", i % 5), &data)
            .await;
        acked.push((shard, seq, data));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    docker(&["unpause", &paused]);
    let read = project.node(1).read_all("compose").await;
    assert_contains_acked(&read, &acked, "node 1 after its pause");
    assert_eq!(
        read,
        project.node(3).read_all("compose").await,
        "node 1 and node 3 diverge; logs:\n{}",
        project.logs()
    );
    drop(project);
    let _ = Command::new("docker").args(["rmi", "-f", &image]).output();
}
