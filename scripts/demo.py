"""``make demo``: run the example DAG end to end with ``dag.test()`` on the sample images.

Uses a throwaway Airflow home under ``.cache/airflow-home`` (SQLite, migrated
here) and writes results to ``demo-output/``; prints where the anonymized
images and the report are. Airflow runs in subprocesses so that its
configuration comes from the environment set here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOME = PROJECT / ".cache" / "airflow-home"
OUTPUT = PROJECT / "demo-output"
DAG_ID = "example_anonymize_folder"


def main() -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        AIRFLOW_HOME=str(HOME),
        AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{HOME / 'airflow.db'}",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        AIRFLOW_PRIVACY_DEMO_OUTPUT=str(OUTPUT),
        # Notices from Airflow's own CLI about optional extras (graphviz for `dags show`) and
        # third-party deprecations say nothing about this run; the tests still see them.
        PYTHONWARNINGS=",".join(("ignore:Could not import graphviz", "ignore:Using `httpx`",
                                 "ignore::DeprecationWarning")),
    )
    HOME.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUTPUT, ignore_errors=True)
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    # Parse every example DAG once, so the release Asset the consumer DAG is scheduled on
    # exists before the run emits its event (else Airflow warns that it must create it).
    subprocess.run([str(BIN / "airflow"), "dags", "reserialize"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "airflow"), "dags", "test", DAG_ID], env=env)
    elapsed = time.perf_counter() - started
    summary_path = OUTPUT / "report" / "summary.json"
    if done.returncode != 0 or not summary_path.exists():
        print(f"demo failed (exit {done.returncode}); see the log above", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text())
    print()
    print(f"example DAG {DAG_ID}: {summary['images']} images, {summary['published']} published, "
          f"{summary['quarantined']} quarantined, {summary['errors']} rejected, "
          f"{summary['persons_detected']} persons detected")
    print(f"DAG wall time {elapsed:.1f} s ({summary['images'] / elapsed:.2f} images/s, "
          "Airflow start-up included)")
    print(f"anonymized images: {OUTPUT / 'release'}")
    print(f"report:            {OUTPUT / 'report' / 'report.html'} (every run: report/runs/)")
    print(f"manifest:          {OUTPUT / 'report' / 'manifest.jsonl'}")
    return 0 if summary["published"] == summary["images"] else 3


if __name__ == "__main__":
    sys.exit(main())
