//! The compose cluster under test and the `docker` commands that fault it. Every command
//! runs with a timeout: a wedged Docker engine fails the run instead of hanging CI.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::process::Command;

/// How long any single docker command may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `program args`, returning stdout; a non-zero exit is an error carrying stderr.
pub async fn run(program: &str, args: &[&str], envs: &[(String, String)]) -> Result<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            anyhow!(
                "`{program} {}` took over {DOCKER_TIMEOUT:?}",
                args.join(" ")
            )
        })?
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `docker ARGS`.
pub async fn docker(args: &[&str]) -> Result<String> {
    run("docker", args, &[]).await
}

/// Why the suite cannot run here, or the compose command to use.
pub async fn compose_tool() -> Result<Vec<String>> {
    docker(&["info", "--format", "{{.ServerVersion}}"])
        .await
        .map_err(|e| anyhow!("the Docker engine does not answer: {e}"))?;
    if run("docker", &["compose", "version"], &[]).await.is_ok() {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    if run("docker-compose", &["version"], &[]).await.is_ok() {
        return Ok(vec!["docker-compose".into()]);
    }
    bail!("neither `docker compose` nor `docker-compose` works")
}

/// One compose project of three nodes.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The compose command (`docker compose` or `docker-compose`).
    pub tool: Vec<String>,
    /// Project name; every container and network it creates carries it.
    pub project: String,
    /// The compose file.
    pub file: PathBuf,
    /// Image to run.
    pub image: String,
    /// Host ports of nodes 1-3.
    pub ports: [u16; 3],
    /// The first three octets of the cluster subnet.
    pub net_prefix: String,
    /// Bind-mounted data directories live under here (`nodeN/`).
    pub data_dir: PathBuf,
}

impl Cluster {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TRIBUTARY_IMAGE".into(), self.image.clone()),
            ("TRIBUTARY_PORT_1".into(), self.ports[0].to_string()),
            ("TRIBUTARY_PORT_2".into(), self.ports[1].to_string()),
            ("TRIBUTARY_PORT_3".into(), self.ports[2].to_string()),
            ("CHAOS_NET_PREFIX".into(), self.net_prefix.clone()),
            ("CHAOS_DATA_DIR".into(), self.data_dir.display().to_string()),
        ]
    }

    /// `docker compose -p PROJECT -f FILE ARGS`.
    pub async fn compose(&self, args: &[&str]) -> Result<String> {
        let file = self.file.display().to_string();
        let mut all: Vec<&str> = self.tool[1..].iter().map(String::as_str).collect();
        all.extend(["-p", &self.project, "-f", &file]);
        all.extend(args);
        run(&self.tool[0], &all, &self.env()).await
    }

    /// The endpoint of node `id` (1-3) as the host reaches it.
    pub fn endpoint(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[(id - 1) as usize])
    }

    /// The cluster-network address of node `id`.
    pub fn ip(&self, id: u64) -> String {
        format!("{}.{}", self.net_prefix, 10 + id)
    }

    /// The container id of node `id`.
    pub async fn container(&self, id: u64) -> Result<String> {
        let out = self.compose(&["ps", "-q", &format!("node{id}")]).await?;
        let container = out.lines().next().unwrap_or("").trim().to_owned();
        if container.is_empty() {
            bail!("no container for node{id} in project {}", self.project);
        }
        Ok(container)
    }

    /// The name of the project's network as Docker knows it.
    pub async fn network(&self) -> Result<String> {
        let out = docker(&[
            "network",
            "ls",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--format",
            "{{.Name}}",
        ])
        .await?;
        out.lines()
            .next()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("project {} has no network", self.project))
    }

    /// The host pid of node `id`'s server process (for `nsenter -n`).
    pub async fn pid(&self, id: u64) -> Result<u32> {
        let container = self.container(id).await?;
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &container]).await?;
        let pid: u32 = pid.parse().with_context(|| format!("pid {pid:?}"))?;
        if pid == 0 {
            bail!("node{id} is not running");
        }
        Ok(pid)
    }

    /// Runs `program args` inside node `id`'s network namespace, from the host (the image
    /// has no shell, tc or iptables).
    pub async fn in_netns(&self, id: u64, program: &str, args: &[&str]) -> Result<String> {
        let pid = self.pid(id).await?.to_string();
        let mut all = vec!["-t", &pid, "-n", program];
        all.extend(args);
        run("nsenter", &all, &[]).await
    }

    /// Starts the project.
    pub async fn up(&self) -> Result<()> {
        for id in 1..=3 {
            std::fs::create_dir_all(self.data_dir.join(format!("node{id}")))?;
        }
        self.compose(&["up", "-d"]).await.map(|_| ())
    }

    /// Saves each node's log into `dir` (`nodeN.log`).
    pub async fn save_logs(&self, dir: &Path) {
        for id in 1..=3 {
            let Ok(container) = self.container(id).await else {
                continue;
            };
            let output = Command::new("docker")
                .args(["logs", "--timestamps", &container])
                .stdin(Stdio::null())
                .output();
            if let Ok(Ok(output)) = tokio::time::timeout(DOCKER_TIMEOUT, output).await {
                let mut log = output.stdout;
                log.extend_from_slice(&output.stderr);
                let _ = std::fs::write(dir.join(format!("node{id}.log")), log);
            }
        }
    }

    /// Removes the project's containers and network (the data directories are bind mounts
    /// and stay where they are).
    pub async fn down(&self) -> Result<()> {
        // A paused container cannot be stopped; unpause first (errors: not paused).
        for id in 1..=3 {
            if let Ok(container) = self.container(id).await {
                let _ = docker(&["unpause", &container]).await;
            }
        }
        self.compose(&["down", "-v", "--timeout", "5"])
            .await
            .map(|_| ())
    }
}
