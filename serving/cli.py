"""`agentloop`: register, gate, promote, roll back and inspect served models by hand.

    agentloop status agentloop-chat
    agentloop register --adapter runs/final/adapter --run-id RUN --eval-set DIR [--agent NAME]
    agentloop gate agentloop-chat 7 [--loss-margin 0.01]
    agentloop promote agentloop-chat 7 --replica http://vllm-0:8000 --replica http://vllm-1:8000
    agentloop rollback agentloop-chat --replica ...
    agentloop render --manifest serving-manifest.json --out deploy/rendered

MLFLOW_TRACKING_URI says which registry; the replicas' bearer token is read from the variable named by
--api-key-env (default AGENTLOOP_VLLM_API_KEY), never from the command line. Exit codes: 0 done,
1 refused (gate rejected, nothing to roll back to), 2 failed and undone (replicas restored, aliases unchanged).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from features.configcli import add_options, from_options
from serving.gate import GateConfig, run_gate
from serving.manifests import RenderConfig, read_serving_manifest, render_to_dir
from serving.promote import PromoteConfig, PromotionError, promote, rollback
from serving.registry import RegisterRequest, RegistryError, register_adapter, status


def _promote_config(args) -> PromoteConfig:
    replicas = {"replica_urls": args.replica} if args.replica else {}
    return from_options(PromoteConfig, args, require_gate=not getattr(args, "force", False), **replicas)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="agentloop",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("status", help="aliases and versions of a registered model")
    s.add_argument("model", nargs="?", default="agentloop-chat")

    r = sub.add_parser("register", help="register a trained adapter as a new version (@challenger)")
    r.add_argument("--adapter", required=True, help="the trainer's <output_dir>/adapter")
    r.add_argument("--run-id", required=True, help="the MLflow run that trained it")
    r.add_argument(
        "--eval-set", required=True, help="a saved evaluation set (training.eval_set.EvalSet.save)"
    )
    r.add_argument("--agent", action="append", default=[], help="the agent of a single-agent training")
    r.add_argument("--model", default="", help="registered model name (default: from --agent)")
    r.add_argument("--data-start", default="")
    r.add_argument("--data-end", default="")

    g = sub.add_parser(
        "gate", help="evaluate a version against the base model and @champion; tag the decision"
    )
    g.add_argument("model")
    g.add_argument("version")
    add_options(g, GateConfig)

    for name, help_ in (
        ("promote", "serve a version on every replica, then move @champion/@previous"),
        ("rollback", "serve @previous again on every replica, then move @champion"),
    ):
        q = sub.add_parser(name, help=help_)
        q.add_argument("model")
        if name == "promote":
            q.add_argument("version")
            q.add_argument("--force", action="store_true", help="promote without a 'promote' gate decision")
        q.add_argument(
            "--replica",
            action="append",
            default=[],
            metavar="URL",
            help="a vLLM base URL (repeat for each replica; default http://127.0.0.1:8000)",
        )
        add_options(q, PromoteConfig, exclude={"replica_urls", "require_gate"})

    k = sub.add_parser("render", help="render the vLLM Kubernetes manifests from a serving manifest")
    k.add_argument("--manifest", required=True)
    k.add_argument("--out", required=True)
    k.add_argument("--config", default="{}", help="RenderConfig fields as JSON")

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    try:
        return _run(args)
    except RegistryError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.command == "status":
        print(json.dumps(status(args.model), indent=1))
    elif args.command == "register":
        v = register_adapter(
            RegisterRequest(
                adapter_dir=args.adapter,
                training_run_id=args.run_id,
                eval_set_dir=args.eval_set,
                agents=args.agent,
                model_name=args.model,
                data_start=args.data_start,
                data_end=args.data_end,
            )
        )
        print(f"registered {v.model_name} v{v.version} (@challenger): {v.model_uri}")
    elif args.command == "gate":
        d = run_gate(
            args.model,
            args.version,
            from_options(GateConfig, args),
        )
        print(json.dumps({"decision": d.decision, "reasons": d.reasons, "metrics": d.metrics}, indent=1))
        return 0 if d.promote else 1
    elif args.command in ("promote", "rollback"):
        config = _promote_config(args)
        try:
            result = (
                promote(args.model, args.version, config)
                if args.command == "promote"
                else rollback(args.model, config)
            )
        except PromotionError as e:
            print(f"failed and undone: {e}", file=sys.stderr)
            print(json.dumps(asdict(e.result), indent=1))
            return 2
        print(json.dumps(asdict(result), indent=1))
    elif args.command == "render":
        files = render_to_dir(
            read_serving_manifest(args.manifest), RenderConfig(**json.loads(args.config)), args.out
        )
        print("\n".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
