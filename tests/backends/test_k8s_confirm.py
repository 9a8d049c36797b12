"""submit/pipeline on Kubernetes ask before creating more Jobs than plan.confirm_above_jobs."""

from aal_k8s.cli import main


def test_submit_on_k8s_above_the_threshold_creates_no_job_without_yes(cli_cluster, tmp_path, capsys):
    argv = ["submit", "--stage", "pairwise", "--store", str(tmp_path / "store"), "--backend", "k8s",
            "--set", "k8s.image=registry.example/aal-k8s:test", "--set", "plan.confirm_above_jobs=10",
            "--set", "k8s.store_volume_claim=aal-store"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "15 Jobs to create" in err and "pass --yes" in err
    assert not cli_cluster.jobs
    assert main([*argv, "--yes"]) == 0
    assert len(cli_cluster.jobs) == 15
    err = capsys.readouterr().err
    assert "rates: device class h100-target" in err and "pairwise" in err  # the plan is shown all the same


def test_the_dry_run_header_says_the_manifests_are_not_for_kubectl_apply(tmp_path, capsys):
    argv = ["submit", "--stage", "multi", "--backend", "k8s", "--dry-run", "--store", str(tmp_path / "s")]
    assert main([*argv, "--set", "k8s.image=registry.example/aal-k8s:test"]) == 0
    header = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("#")]
    assert any("do not kubectl apply" in ln for ln in header)
    assert not any("Apply with" in ln for ln in header)


def test_the_in_cluster_pipeline_job_confirms_with_yes_having_no_terminal():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    job = next(d for d in yaml.safe_load_all((root / "k8s" / "pipeline-job.yaml").read_text()) if d and d["kind"] == "Job")
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["args"][:2] == ["pipeline", "--yes"]
