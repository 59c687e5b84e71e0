"""Credentials on command lines and in deployment snippets (issue 14).

Built from each tool's documented flag syntax (its man page or --help), not from examples:
  - redis-cli / redis-benchmark `-a PASSWORD`, `--pass PASSWORD`, `--user U --pass P`;
  - mysql, mysqldump, mysqladmin, mysqlimport, mysqlsh, mariadb: `-pPASSWORD` glued (`-p` alone
    prompts and `-p NAME` names a database, so only the glued form is a password), `--password=X`;
  - sshpass `-p PASSWORD` (glued or not; `-f FILE`, `-e` and `-d FD` are references);
  - docker, podman, nerdctl, buildah, helm, oras `login ... -p X` / `--password X` /
    `--password=X` (only after `login`: `docker run -p 8080:80` is a port); skopeo `--creds U:P`,
    `--src-creds`, `--dest-creds`;
  - mongo, mongosh, mongodump, mongorestore, mongoexport, mongoimport `-p X`, `--password X`;
  - ldapsearch, ldapmodify, ldapadd, ldapdelete, ldapwhoami, ldappasswd `-w X` (`-W` prompts);
  - curl `-u USER:PASS`, `--user`, `-U`/`--proxy-user` (`-u USER` alone prompts);
  - smbclient, rpcclient `-U USER%PASS`, `--user=USER%PASS`;
  - rabbitmqctl `add_user NAME PASS`, `change_password NAME PASS`;
  - htpasswd `-b[flags] FILE USER PASS`;
  - keytool `-storepass X`, `-keypass X` (and the src/dest forms);
  - Kubernetes env entries `- name: DB_PASSWORD` followed by `value: X` (a `valueFrom:` /
    `secretKeyRef` entry has no value and is left alone).
Generic `--password X`, `--password=X`, `PASSWORD=X`, `X_PASSWORD: Y` are the key=value detectors'.
A value that is a reference is never touched: `$VAR`, `${VAR}`, `$(cmd)`, `<password>`, `{{ .x }}`,
`%(x)s`, `****`, and the stop words of the key=value detectors ("none", "changeme" is a value).
"""

from __future__ import annotations

import re

from features.redact.patterns import R_ASSIGN, Span

# A shell word: single-quoted, double-quoted or bare (the group that matched holds the value).
_W = r"""(?:'(?P<q1>[^'\n]{1,256})'|"(?P<q2>(?:[^"\\\n]|\\.){1,256})"|(?P<b>[^\s'"`;&|<>()]{1,256}))"""

# The gate, on the lower-cased text (a literal alternation: one fast scan; chat has none of these).
CLI_GATE = re.compile(
    r"redis-|mysql|mariadb|sshpass|login|skopeo|mongo|ldap|curl|smbclient|rpcclient|rabbitmqctl|htpasswd"
    r"|keytool|value:"
)
CLI_CMD = re.compile(
    r"(?<![\w.-])(?P<cmd>redis-cli|redis-benchmark|mysql(?:dump|admin|import|sh)?|mariadb(?:-dump|dump)?"
    r"|sshpass|docker|podman|nerdctl|buildah|helm|oras|skopeo|mongo(?:sh|dump|restore|export|import)?"
    r"|ldap(?:search|modify|add|delete|whoami|passwd)|curl|smbclient|rpcclient|rabbitmqctl|htpasswd|keytool)"
    r"(?:\.exe)?(?![\w-])"
)
_END = re.compile(r"\n|;|&&|\|\||\|(?!\|)|(?<!\\)`")  # where one command ends
_S = r"(?<![^\s=])"  # the flag starts a shell word
_FLAGS = {
    "redis": re.compile(_S + r"(?:-a|--pass)\s+" + _W),
    "mysql": re.compile(_S + r"-p" + _W),  # glued only: "-p" then a space prompts
    "sshpass": re.compile(_S + r"-p\s*" + _W),
    "login": re.compile(_S + r"(?:-p|--password)(?:\s+|=)" + _W),
    "skopeo": re.compile(_S + r"--(?:src-|dest-)?creds(?:\s+|=)[^\s:'\"]{1,128}:" + _W),
    "mongo": re.compile(_S + r"(?:-p|--password)\s+" + _W),
    "ldap": re.compile(_S + r"-w\s+" + _W),
    "curl": re.compile(_S + r"(?:-u|--user|-U|--proxy-user)\s*['\"]?[^\s:'\"$]{1,128}:" + _W),
    "smb": re.compile(_S + r"(?:-U\s*|--user=)['\"]?[^\s%'\"]{1,128}%" + _W),
    "rabbitmqctl": re.compile(r"(?<!\S)(?:add_user|change_password)\s+\S{1,128}\s+" + _W),
    "htpasswd": re.compile(r"(?<!\S)-[a-zA-Z]*b[a-zA-Z]*\s+(?:-\S+\s+)*\S{1,256}\s+\S{1,128}\s+" + _W),
    "keytool": re.compile(_S + r"-(?:src|dest)?(?:store|key)pass\s+" + _W),
}
_FAMILY = {
    "redis-cli": "redis", "redis-benchmark": "redis", "sshpass": "sshpass", "skopeo": "skopeo",
    "curl": "curl", "smbclient": "smb", "rpcclient": "smb", "rabbitmqctl": "rabbitmqctl",
    "htpasswd": "htpasswd", "keytool": "keytool",
}  # fmt: skip
_LOGIN_TOOLS = ("docker", "podman", "nerdctl", "buildah", "helm", "oras")
KUBE_ENV = re.compile(
    r"(?i)name:\s*[\"']?[A-Za-z0-9_.-]{0,40}(?:password|passwd|secret|token|api_?key)[\"']?[ \t]*\r?\n"
    r"[ \t]*value:[ \t]*" + _W
)
_REFERENCE = re.compile(r"[$<{%*]|\?\?|\.\.\.|\[")
_STOP = frozenset("none null nil true false redacted hidden masked password secret changeme_not xxx".split())


def _family(cmd: str) -> str | None:
    if cmd.startswith(("mysql", "mariadb")):
        return "mysql"
    if cmd.startswith("mongo"):
        return "mongo"
    if cmd.startswith("ldap"):
        return "ldap"
    if cmd in _LOGIN_TOOLS:
        return "login"
    return _FAMILY.get(cmd)


def _value_span(m: re.Match) -> tuple[int, int] | None:
    for g in ("q1", "q2", "b"):
        if m.group(g) is not None:
            s, e = m.span(g)
            v = m.group(g)
            if g == "b":
                stripped = v.rstrip(".,")
                e -= len(v) - len(stripped)
                v = stripped
            if not v or _REFERENCE.match(v) or v.startswith("-") or v.lower() in _STOP or len(set(v)) <= 1:
                return None
            return s, e
    return None


def find_cli_credentials(text: str, low: str, out: list[Span]) -> None:
    if not CLI_GATE.search(low):
        return
    for m in CLI_CMD.finditer(text):
        family = _family(m.group("cmd"))
        if family is None:
            continue
        end = _END.search(text, m.end())
        stop = min(end.start() if end else len(text), m.end() + 600)
        args = text[m.end() : stop]
        if family == "login":
            if not re.search(r"(?<!\S)login(?!\S)", args):
                continue
        for f in _FLAGS[family].finditer(text, m.end(), stop):
            span = _value_span(f)
            if span:
                out.append(Span(span[0], span[1], "key_value_secret", R_ASSIGN))
    if "value:" in low:
        for f in KUBE_ENV.finditer(text):
            span = _value_span(f)
            if span:
                out.append(Span(span[0], span[1], "key_value_secret", R_ASSIGN))
