"""The conformance kit on released bugs: pairs of peer releases, the buggy one and its fix.

Each pair is a bug that reached a release of rectified-flow-pytorch, torchcfm or diffusers
and the release that fixed it (found in their histories: the commit, issue or PR is in the
table). Both releases are installed at benchmark time, each in its own folder
(`pip install --no-deps --target runs/peers/<package>-<version>`; small pure-Python deps
into runs/peers/_deps), never into the environment; each check runs in a child process with
only that folder in front of sys.path. The adapters (benchmarks/bug_corpus_*.py) call the
public API as its README does and translate conventions; the verdicts are the kit's own.
A second table runs the training-step checks on today's releases of the four libraries.

    python -m benchmarks.bench_bug_corpus            # both tables (markdown)
    python -m benchmarks.bench_bug_corpus --pairs    # only the pairs (18 min here: 2 shared
                                                     # cores at load ~18; 4 s CPU a case)
    python -m benchmarks.bench_bug_corpus --current  # only today's releases
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "runs", "peers")
DEPS = os.path.join(PEERS, "_deps")
DEP_PACKAGES = ("einops", "einx", "frozendict", "ema-pytorch", "pot==0.9.7.post1")
PIP_NAME = {"rfp": "rectified-flow-pytorch", "torchcfm": "torchcfm", "diffusers": "diffusers",
            "flow_matching": "flow_matching"}

# library, what, bug and where it was fixed, buggy version, fixed version, case, case kwargs
PAIRS = [
    ("rfp", "NanoFlow.sample", "Euler evaluated on linspace(0, 1, N) stepped by 1/N "
     "(v0.2.13)", "0.2.12", "0.2.13", "nanoflow_sampler", {}),
    ("rfp", "NanoFlow.forward", "path x_t = t noise + (1 - t) data regressed on data - noise "
     "(v0.3.0)", "0.2.14", "0.3.0", "nanoflow_training", {}),
    ("rfp", "RectifiedFlow.forward(data, cond=y)", "model kwargs (labels) not passed to the "
     "network in training (f343d04)", "0.4.4", "0.4.5", "rectified_flow_training", {}),
    ("rfp", "UAFlow.forward((data, y))", "null label of classifier-free guidance = class 0 "
     "(b7c83b8, PR #39)", "0.9.14", "0.9.15", "uaflow_training", {}),
    ("rfp", "MeanFlow.forward, uniform times", "times drawn with randn where rand was meant "
     "(issue #16, 4c9de96)", "0.3.25", "0.3.26", "meanflow_training", {}),
    ("rfp", "MeanFlow.forward, uniform times", "r = U t instead of two sorted draws "
     "(961ddeb, 'correct sampling of r')", "0.4.2", "0.4.4", "meanflow_training", {}),
    ("rfp", "PseudoHuberLossWithLPIPS (predicted data)", "x1 = v t instead of x_t + (1 - t) v "
     "(0e08134)", "0.0.20", "0.0.21", "rfp_data_prediction", {}),
    ("torchcfm", "TargetConditionalFlowMatcher", "mu_t = t x1 with t (B,) on the feature axis "
     "(pad_t_like_x added in 1.0.5)", "1.0.4", "1.0.5", "torchcfm_training",
     {"cls": "TargetConditionalFlowMatcher"}),
    ("torchcfm", "VariancePreservingConditionalFlowMatcher", "cos/sin(pi t / 2) with t on the "
     "feature axis (1.0.5)", "1.0.4", "1.0.5", "torchcfm_training",
     {"cls": "VariancePreservingConditionalFlowMatcher", "scheduler": "cosine"}),
    ("diffusers", "FlowMatchEulerDiscreteScheduler.step(generator=g), stochastic_sampling",
     "noise from torch.randn_like, the generator ignored (PR #13678)", "0.38.0", "0.39.0",
     "diffusers_seeded", {}),
]

# library, version, what, case, kwargs
CURRENT = [
    ("flow_matching", "1.0.10", "AffineProbPath(CondOT) training step (README)",
     "meta_training", {}),
    ("flow_matching", "1.0.10", "AffineProbPath(Cosine) training step", "meta_training",
     {"scheduler": "cosine"}),
    ("flow_matching", "1.0.10", "AffineProbPath(Cosine).velocity_to_target (x1 from v)",
     "meta_prediction", {}),
    ("flow_matching", "1.0.10", "AffineProbPath(Cosine).velocity_to_epsilon (x0 from v)",
     "meta_prediction", {"target": "x0"}),
    ("torchcfm", "1.0.7", "ConditionalFlowMatcher(sigma=0)", "torchcfm_training", {}),
    ("torchcfm", "1.0.7", "TargetConditionalFlowMatcher(sigma=0)", "torchcfm_training",
     {"cls": "TargetConditionalFlowMatcher"}),
    ("torchcfm", "1.0.7", "VariancePreservingConditionalFlowMatcher(sigma=0)",
     "torchcfm_training", {"cls": "VariancePreservingConditionalFlowMatcher",
                           "scheduler": "cosine"}),
    ("torchcfm", "1.0.7", "ExactOptimalTransportConditionalFlowMatcher(sigma=0)",
     "torchcfm_training", {"cls": "ExactOptimalTransportConditionalFlowMatcher"}),
    ("rfp", "0.14.0", "NanoFlow.forward", "nanoflow_training", {}),
    ("rfp", "0.14.0", "NanoFlow.sample", "nanoflow_sampler", {}),
    ("rfp", "0.14.0", "RectifiedFlow.forward(data, cond=y)", "rectified_flow_training", {}),
    ("rfp", "0.14.0", "UAFlow.forward((data, y))", "uaflow_training", {}),
    ("rfp", "0.14.0", "MeanFlow.forward, uniform times", "meanflow_training", {}),
    ("rfp", "0.14.0", "RectifiedFlow.forward's pred_data (x1 from v)",
     "rectified_flow_prediction", {}),
    ("diffusers", "0.42.1", "FlowMatchEulerDiscreteScheduler, stochastic_sampling",
     "diffusers_seeded", {}),
    ("diffusers", "0.42.1", "FlowMatchEulerDiscreteScheduler (sigmas = 1 - t_grid)",
     "diffusers_solver", {}),
    ("diffusers", "0.42.1", "FlowMatchHeunDiscreteScheduler (sigmas = 1 - t_grid)",
     "diffusers_solver", {"cls": "FlowMatchHeunDiscreteScheduler", "method": "heun"}),
]


def ensure(lib, version):
    """runs/peers/<package>-<version> (installed once); None and the reason if pip fails."""
    package = PIP_NAME[lib]
    folder = os.path.join(PEERS, f"{package}-{version}")
    if not os.path.isdir(folder):
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", folder,
               f"{package}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            return None, done.stderr.strip().splitlines()[-1:]
    if not os.path.isdir(DEPS) or not os.path.isdir(os.path.join(DEPS, "einx")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        DEPS, *DEP_PACKAGES], capture_output=True, text=True)
    return folder, None


def run_case(lib, version, case, kwargs):
    """The kit's report of one case in a child process: dict(passed, codes, findings, notes)."""
    folder, why = ensure(lib, version)
    if folder is None:
        return {"error": f"cannot install {PIP_NAME[lib]}=={version}: {why}"}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([folder, DEPS, ROOT]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "benchmarks.bench_bug_corpus", "--one", case, version,
           json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the adapter failed: {tail[:300]}"}
    return json.loads(lines[-1])


def child(case, version, kwargs):
    from benchmarks import bug_corpus_cases, bug_corpus_rfp

    fn = getattr(bug_corpus_rfp, case, None) or getattr(bug_corpus_cases, case)
    report = fn(version, **json.loads(kwargs))
    print(json.dumps({"passed": report.passed, "codes": report.codes,
                      "findings": report.findings, "notes": report.notes}))


def _said(result, notes=False):
    if "error" in result:
        return f"ERROR: {result['error']}"
    said = "pass" if result["passed"] else "FAIL: " + "; ".join(result["findings"])
    if notes:  # today's releases: the observations too (what each check measured)
        said += "".join(f"; note: {n}" for n in result["notes"])
    return said.replace("|", "\\|")


def pairs_table():
    rows = ["| library | API | bug (fix) | buggy | kit on the buggy release | fixed | kit on the "
            "fixed release | caught |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    caught = 0
    for lib, what, bug, bad, good, case, kwargs in PAIRS:
        r_bad, r_good = run_case(lib, bad, case, kwargs), run_case(lib, good, case, kwargs)
        ok_bad = "error" not in r_bad and not r_bad["passed"]
        new_bad = set(r_bad.get("codes", [])) - set(r_good.get("codes", []))
        verdict = "yes" if ok_bad and r_good.get("passed") else (
            "yes (the fixed release has another finding)" if ok_bad and new_bad else "MISSED")
        caught += verdict.startswith("yes")
        rows.append(f"| {PIP_NAME[lib]} | {what} | {bug} | {bad} | {_said(r_bad)} | {good} | "
                    f"{_said(r_good)} | {verdict} |")
        print(rows[-1], flush=True)
    libs = len({p[0] for p in PAIRS})
    rows.append(f"\n{caught} of {len(PAIRS)} pairs caught, {libs} libraries.")
    print(rows[-1])
    return rows


def current_table():
    rows = ["| library | version | API | kit |", "|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for lib, version, what, case, kwargs in CURRENT:
        rows.append(f"| {PIP_NAME[lib]} | {version} | {what} | "
                    f"{_said(run_case(lib, version, case, kwargs), notes=True)} |")
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, metavar=("CASE", "VERSION", "KWARGS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--pairs", action="store_true", help="only the release pairs")
    parser.add_argument("--current", action="store_true", help="only today's releases")
    args = parser.parse_args()
    if args.one:
        return child(*args.one)
    if not args.current:
        pairs_table()
    if not args.pairs:
        current_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
