"""features/configcli.py: a config dataclass's fields, defaults, types and comments become its CLI options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

import pytest

from features.configcli import add_options, from_options


@dataclass
class Example:
    name: str  # no default: the option is required
    steps: int = 10  # optimizer steps
    rate: float = 2e-4
    bf16: bool = True  # autocast to bfloat16
    # a comment block above the field is its help too
    modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    env: dict[str, str] = field(default_factory=dict)
    seqs: int | None = None
    note: str = (
        "a long default value that makes the formatter wrap this line for sure"  # help inside a wrapped value
    )
    tags: list[str] = field(
        default_factory=list
    )  # help after the closing parenthesis, where ruff puts the comment of a field too long for one line


def parse(argv, **kw):
    p = argparse.ArgumentParser()
    add_options(p, Example, **kw)
    return p, p.parse_args(argv)


def test_defaults_are_the_dataclass_defaults():
    _, args = parse(["--name", "a"])
    assert from_options(Example, args) == Example(name="a")


def test_each_type_parses_its_text():
    _, args = parse(
        [
            "--name=b",
            "--steps=3",
            "--rate=0.5",
            "--no-bf16",
            "--modules=q_proj, k_proj",
            '--env={"A": "1"}',
            "--seqs=4",
        ]
    )
    got = from_options(Example, args)
    assert got == Example("b", 3, 0.5, False, ["q_proj", "k_proj"], {"A": "1"}, 4)
    _, args = parse(["--name=b", '--modules=["x"]', "--seqs=none"])
    assert from_options(Example, args).modules == ["x"] and from_options(Example, args).seqs is None


def test_help_carries_the_fields_comments_and_defaults():
    p, _ = parse(["--name", "a"])
    text = " ".join(p.format_help().split())
    assert "--steps STEPS optimizer steps (default: 10)" in text
    assert "a comment block above the field is its help too" in text
    assert "help inside a wrapped value" in text
    assert "--tags A,B,... help after the closing parenthesis, where ruff puts the comment" in text
    assert "--bf16, --no-bf16 autocast to bfloat16 (default: true)" in text


def test_a_missing_required_field_and_bad_values_are_named(capsys):
    with pytest.raises(SystemExit):
        parse([])
    assert "--name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--name=a", "--env={oops"])
    assert "--env" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--name=a", "--steps=ten"])
    assert "--steps" in capsys.readouterr().err


def test_excluded_fields_and_overrides():
    _, args = parse(["--name=a"], exclude={"env"}, defaults={"steps": 99})
    assert not hasattr(args, "env")
    assert from_options(Example, args, env={"K": "v"}) == Example("a", steps=99, env={"K": "v"})


def test_the_vllm_cli_offers_every_server_setting_but_the_secret_and_the_adapter_map(capsys):
    import re

    from serving.vllm_server import VLLMServerConfig, main

    with pytest.raises(SystemExit) as e:
        main(["start", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    offered = set(re.findall(r"--([a-z-]+)", out))
    missing = {f.name for f in fields(VLLMServerConfig)} - {o.replace("-", "_") for o in offered}
    # the key comes from --api-key-env (never argv, where `ps` shows it); adapters from --lora NAME=DIR
    assert missing == {"api_key", "lora_modules"}
    assert {"api-key-env", "lora", "pidfile"} <= offered
