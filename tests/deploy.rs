//! What an operator installs from deploy/: the Prometheus rules validate with promtool, and
//! every metric the rules and the Grafana dashboard use is exported on /metrics.

mod support;

use pgsluice::config::PoolMode;
use std::collections::BTreeSet;
use std::path::Path;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `pgsluice_*` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pgsluice_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn prometheus_rules_validate_with_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian's prometheus package, installed by .ci/run) must be on PATH");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 16 rules found"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_use_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy("grafana/pgsluice.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            exprs.push_str(q);
        }
    }
    let used: BTreeSet<String> = metric_names(&exprs)
        .union(&metric_names(&deploy("prometheus/alerts.yml")))
        .cloned()
        .collect();
    assert!(used.len() >= 15, "{used:?}");

    // Traffic that makes every family show samples: queries, an error, a wrong password, a
    // failed reload (this proxy has no file to reload), prepared statements.
    let pg = start_postgres();
    let dir = std::env::temp_dir().join(format!("pgsluice-deploy-{}", std::process::id()));
    let pki = support::certs::make(&dir, "", "deploy");
    let tls = format!(
        "[tls]\nmode = \"prefer\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let text = config_text(&pg, "activity_sample_interval = 0.1", "pool_size = 2").replacen(
        "[admin]",
        &format!("{tls}[http]\naddr = \"127.0.0.1:0\"\n\n[admin]"),
        1,
    );
    // A database with several upstreams, for the pgsluice_upstream_* families of its servers.
    let text = format!(
        "{text}\n[[databases]]\nname = \"routed\"\ndbname = \"appdb\"\ntarget_session_attrs = \"read-write\"\nupstreams = [{{ host = \"127.0.0.1\", port = {} }}]\n",
        pg.port
    );
    let proxy = Proxy::start(&text).await;
    let routed = connect(&proxy.url(PoolMode::Transaction, AGENT, "routed"))
        .await
        .unwrap();
    routed.batch_execute("SELECT 1").await.unwrap();
    let c = proxy.connect(PoolMode::Transaction).await;
    let stmt = c.prepare("SELECT $1::int + 1").await.unwrap();
    for i in 0..3 {
        c.query_one(&stmt, &[&i]).await.unwrap();
    }
    assert!(c.simple_query("SELECT 1/0").await.is_err());
    assert!(
        connect(&proxy.url(PoolMode::Transaction, ("agent", "nope"), "app"))
            .await
            .is_err()
    );
    assert!(proxy.running.app.reload().is_err());
    // One TLS handshake (SSLRequest, then rustls), for the pgsluice_tls_* families. The client
    // can finish its side before the proxy has counted it: a login over it (which the proxy
    // reads only after its side is done) makes sure the count is in.
    let tls = support::certs::tls_connect(proxy.port(PoolMode::Session), &pki.ca, false, &[])
        .await
        .unwrap();
    let over_tls = support::certs::postgres_over(tls).await.unwrap();
    let one: i32 = over_tls.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // One pg_stat_activity sample, for the pgsluice_upstream_* families.
    let start = std::time::Instant::now();
    let sampled = |p: &Proxy| {
        p.running
            .app
            .activity
            .all()
            .iter()
            .any(|(_, s)| !s.groups.is_empty())
    };
    while !sampled(&proxy) && start.elapsed().as_secs() < 10 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let addr = proxy.running.http.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let exported: BTreeSet<String> = raw
        .lines()
        .filter(|l| l.starts_with("pgsluice_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by deploy/ but not exported: {missing:?}\nexported: {exported:?}"
    );
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command from the repository root; (success, stdout + stderr).
fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (installed by .ci/run): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_dockerfile_parses_and_passes_the_lint() {
    let (ok, text) = run(
        &python3(),
        &["tests/deploy/lint_dockerfile.py", "Dockerfile"],
    );
    assert!(ok && text.contains("Dockerfile: ok"), "{text}");
    // The lint fails what it should: a root, unpinned, shell-form image.
    let bad = std::env::temp_dir().join(format!("pgsluice-bad-{}.Dockerfile", std::process::id()));
    std::fs::write(&bad, "FROM debian\nENTRYPOINT pgsluice\n").unwrap();
    let (ok, text) = run(
        &python3(),
        &["tests/deploy/lint_dockerfile.py", bad.to_str().unwrap()],
    );
    assert!(!ok, "{text}");
    for problem in ["pin a tag", "no USER", "no HEALTHCHECK", "shell form"] {
        assert!(text.contains(problem), "{problem}: {text}");
    }
    let _ = std::fs::remove_file(bad);
    // What the image runs: the HEALTHCHECK's command and the config path exist in the binary.
    let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(docker.contains("\"healthcheck\"") && docker.contains("USER 65532"));
}

#[test]
fn every_kubernetes_manifest_validates_against_the_schemas() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| {
            format!(
                "deploy/kubernetes/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    // As a module: pip's console script may not be on PATH yet (pyenv shims).
    let mut args = vec!["-m", "kubernetes_validate", "--strict"];
    args.extend(files.iter().map(String::as_str));
    let (ok, text) = run(&python3(), &args);
    assert!(ok, "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 9, "{text}");
    // A mistake fails: an unknown field under strict validation.
    let bad = std::env::temp_dir().join(format!("pgsluice-bad-{}.yaml", std::process::id()));
    let pdb = std::fs::read_to_string(root().join("deploy/kubernetes/pdb.yaml")).unwrap();
    std::fs::write(&bad, pdb.replace("minAvailable", "minAvailible")).unwrap();
    let (ok, text) = run(
        &python3(),
        &[
            "-m",
            "kubernetes_validate",
            "--strict",
            bad.to_str().unwrap(),
        ],
    );
    assert!(!ok, "{text}");
    let _ = std::fs::remove_file(bad);
}

/// The pgsluice.toml of each ConfigMap (and compose's) is accepted by `pgsluice check-config`
/// with its ${NAME}s set, and the Deployment's grace period covers its shutdown_timeout.
#[test]
fn the_shipped_configurations_check_and_match_their_manifests() {
    let extract = "import yaml,sys\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n    if d and d.get('kind') == 'ConfigMap': print(d['data']['pgsluice.toml'] + '\\n#----')";
    let dir = std::env::temp_dir().join(format!("pgsluice-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut configs = Vec::new();
    for f in ["configmap.yaml", "sidecar.yaml"] {
        let path = format!("deploy/kubernetes/{f}");
        let (ok, text) = run(&python3(), &["-c", extract, &path]);
        assert!(ok, "{text}");
        configs.extend(
            text.split("#----\n")
                .filter(|t| !t.trim().is_empty())
                .map(str::to_owned),
        );
    }
    configs.push(std::fs::read_to_string(root().join("deploy/compose/pgsluice.toml")).unwrap());
    assert_eq!(configs.len(), 3);
    for (i, text) in configs.iter().enumerate() {
        let file = dir.join(format!("{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .arg("check-config")
            .arg(&file)
            .envs([
                ("UPSTREAM_HOST", "db.example"),
                ("UPSTREAM_PASSWORD", "x"),
                ("AGENT_PASSWORD", "x"),
                ("ADMIN_PASSWORD", "x"),
                ("APP_DB_PASSWORD", "x"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deployment = deploy("kubernetes/deployment.yaml");
    let grace: u64 = deployment
        .split("terminationGracePeriodSeconds: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let shutdown: u64 = configs[0]
        .split("shutdown_timeout = ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        grace >= shutdown + 5,
        "grace {grace} s, shutdown_timeout {shutdown} s + preStop 5 s"
    );
    for probe in [
        "path: /health",
        "path: /ready",
        "preStop:",
        "readOnlyRootFilesystem: true",
    ] {
        assert!(deployment.contains(probe), "{probe}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The unit file has the hardening the docs promise, and systemd-analyze (installed by
/// .ci/run) accepts it with the binary in place.
#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = deploy("systemd/pgsluice.service");
    for key in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(key), "{key}");
    }
    let dir = std::env::temp_dir().join(format!("pgsluice-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgsluice.service");
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/pgsluice", env!("CARGO_BIN_EXE_pgsluice")),
    )
    .unwrap();
    let (ok, text) = run("systemd-analyze", &["verify", file.to_str().unwrap()]);
    assert!(ok && text.trim().is_empty(), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
