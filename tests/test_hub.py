"""Publishing on the Hub: `push_folder` and `--push-to-hub` on the commands.

There is no network here, so the Hub is replaced at the HTTP boundary: huggingface_hub's own client (`HfApi`) runs
unchanged, but the HTTP client it gets from its client factory (`huggingface_hub.utils._http.set_client_factory`)
carries an `httpx.MockTransport` (httpx2 for huggingface_hub 2.x) that answers the endpoints a push uses (whoami,
the card's metadata check, repository creation and info, branch creation, preupload, the LFS batch API and its
upload URLs, commit) as the Hub does, keeps what was uploaded and records every request. Xet storage is switched
off for these tests (`HF_HUB_DISABLE_XET`): hf_xet does its own networking in Rust, outside the HTTP client, so a
test could not see it; with it off, large files take the Hub's plain LFS path over the same client.
"""

import base64
import hashlib
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from huggingface_hub import constants
from huggingface_hub.utils import _http

import leanbert
from leanbert.architectures import BY_MODEL_TYPE
from conftest import HEADS
from leanbert.commands.convert import main as convert_main
from leanbert.commands.export import main as export_main
from leanbert.common import models
from leanbert.common.errors import LeanbertError
from leanbert.common.output import MANIFEST, foreign_entries
from leanbert.common.passages import read_passages
from leanbert.publishing import push_folder
from leanbert.conversion import convert

try:
    http = importlib.import_module("httpx2")  # what huggingface_hub 2.x speaks through
except ImportError:
    http = importlib.import_module("httpx")

TOKEN = "hf_mock_write_token"
REPO_ID = "alice/shatter-tiny"


class MockHub:
    """The Hub's HTTP API as `huggingface_hub` uses it for a push, in memory. `refuse[endpoint] = status` makes an
    endpoint ("whoami", "validate", "create", "info", "branch", "preupload", "lfs", "commit") answer with that
    error, as the Hub answers a token without the right (401, 403) or an unknown repository (404)."""

    LFS_SUFFIXES = (".safetensors", ".bin", ".png")  # what the Hub's default .gitattributes stores in LFS

    def __init__(self):
        self.requests: list[tuple[str, str]] = []  # the requests to the endpoints above
        self.others: list[tuple[str, str]] = []
        self.repos: dict[str, dict] = {}
        self.objects: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.refuse: dict[str, int] = {}
        self.role = "write"
        self.orgs = [{"name": "LeanLab", "roleInOrg": "write"}, {"name": "watchers", "roleInOrg": "read"}]
        self.validated: list[dict] = []

    def error(self, status: int, message: str):
        return http.Response(status, json={"error": message}, headers={"X-Error-Message": message})

    def handle(self, request):
        path, method = unquote(request.url.path), request.method
        endpoint = self.endpoint(method, path)
        if endpoint is None:  # huggingface_hub's own look-ups (telemetry, say): not part of a push
            self.others.append((method, path))
            return self.error(404, "Not found")
        self.requests.append((method, path))
        if endpoint != "upload" and request.headers.get("authorization") != f"Bearer {TOKEN}":
            return self.error(401, "Invalid credentials in Authorization header")
        if self.refuse.get(endpoint) == "unreachable":
            raise http.ConnectError("[Errno 111] Connection refused", request=request)
        if self.refuse.get(endpoint) == "html":  # a proxy's or captive portal's page
            return http.Response(200, content=b"<html><body>Log in</body></html>",
                                 headers={"Content-Type": "text/html"})
        if endpoint in self.refuse:
            status = self.refuse[endpoint]
            return self.error(status, {401: "Invalid credentials", 403: "You don't have the rights to write here",
                                       404: "Repository not found"}.get(status, "refused"))
        return getattr(self, endpoint)(request, path)

    @staticmethod
    def endpoint(method: str, path: str) -> str | None:
        for name, verb, pattern in (
                ("whoami", "GET", r"/api/whoami-v2"), ("create", "POST", r"/api/repos/create"),
                ("validate", "POST", r"/api/validate-yaml"),
                ("preupload", "POST", r"/api/models/[^/]+/[^/]+/preupload/.+"),
                ("commit", "POST", r"/api/models/[^/]+/[^/]+/commit/.+"),
                ("branch", "POST", r"/api/models/[^/]+/[^/]+/branch/.+"),
                ("info", "GET", r"/api/models/[^/]+/[^/]+(/revision/.+)?"),
                ("lfs", "POST", r"/[^/]+/[^/]+\.git/info/lfs/objects/batch"),
                ("upload", "PUT", r"/mock-lfs-storage/[0-9a-f]{64}")):
            if method == verb and re.fullmatch(pattern, path):
                return name
        return None

    @staticmethod
    def repo_of(path: str) -> str:
        return "/".join(path.removeprefix("/api/models/").removeprefix("/").split("/")[:2]).removesuffix(".git")

    def whoami(self, request, path):
        return http.Response(200, json={"type": "user", "name": "alice", "orgs": self.orgs,
                                        "auth": {"type": "access_token", "accessToken": {"role": self.role}}})

    def validate(self, request, path):
        """The Hub's check of a card's metadata before a commit: what the model tree and filters rely on."""
        content = json.loads(request.content)["content"]
        data = yaml.safe_load(content.split("---\n")[1]) if content.startswith("---\n") else {}
        errors = []
        if data.get("base_model") is not None and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(data["base_model"])):
            errors.append(f'"base_model" with value "{data["base_model"]}" is not a valid model id')
        if data.get("base_model_relation") not in (None, "adapter", "merge", "quantized", "finetune"):
            errors.append('"base_model_relation" must be one of adapter, merge, quantized, finetune')
        if data.get("base_model_relation") and not data.get("base_model"):
            errors.append('"base_model_relation" needs "base_model"')
        if data.get("pipeline_tag") not in (None, "fill-mask", "text-classification", "token-classification",
                                            "question-answering", "feature-extraction", "sentence-similarity"):
            errors.append(f'"pipeline_tag" {data["pipeline_tag"]!r} is not a task')
        self.validated.append(data)
        return http.Response(400 if errors else 200, json={"errors": [{"message": e} for e in errors],
                                                           "warnings": []})

    def create(self, request, path):
        body = json.loads(request.content)
        repo_id = f"{body.get('organization') or 'alice'}/{body['name']}"
        if repo_id in self.repos:  # the Hub names the existing repository in its refusal
            return http.Response(409, json={"error": "You already created this model repo",
                                            "url": f"https://huggingface.co/{repo_id}"},
                                 headers={"X-Error-Message": "You already created this model repo"})
        private = body.get("private", body.get("visibility") == "private")
        self.repos[repo_id] = {"private": bool(private), "branches": {"main"}}
        return http.Response(200, json={"url": f"https://huggingface.co/{repo_id}", "name": repo_id})

    def info(self, request, path):
        repo_id = self.repo_of(path)
        if repo_id not in self.repos:  # the Hub names the cause in a header, which huggingface_hub reads
            response = self.error(404, "Repository not found")
            response.headers["X-Error-Code"] = "RepoNotFound"
            return response
        return http.Response(200, json={"id": repo_id, "modelId": repo_id, "private": self.repos[repo_id]["private"],
                                        "sha": "0" * 40, "siblings": []})

    def branch(self, request, path):
        repo_id, branch = self.repo_of(path), path.split("/branch/", 1)[1]
        if branch in self.repos[repo_id]["branches"]:
            return self.error(409, "Reference already exists")
        self.repos[repo_id]["branches"].add(branch)
        return http.Response(200, json={})

    def preupload(self, request, path):
        files = json.loads(request.content)["files"]
        return http.Response(200, json={"files": [
            {"path": f["path"], "shouldIgnore": False,
             "uploadMode": "lfs" if f["path"].endswith(self.LFS_SUFFIXES) or f["size"] > 10_000_000 else "regular"}
            for f in files]})

    def lfs(self, request, path):
        objects = json.loads(request.content)["objects"]
        return http.Response(200, json={"transfer": "basic", "objects": [
            {"oid": o["oid"], "size": o["size"],
             "actions": {"upload": {"href": f"https://huggingface.co/mock-lfs-storage/{o['oid']}"}}}
            for o in objects]})

    def upload(self, request, path):
        data, oid = request.read(), path.rsplit("/", 1)[1]
        if hashlib.sha256(data).hexdigest() != oid:
            return self.error(400, "content does not match its oid")
        self.objects[oid] = data
        return http.Response(200)

    def commit(self, request, path):
        repo_id, revision = self.repo_of(path), path.split("/commit/", 1)[1]
        if revision not in self.repos[repo_id]["branches"]:
            return self.error(404, f"Invalid rev id: {revision}")
        lines = [json.loads(line) for line in request.content.splitlines() if line.strip()]
        files = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.objects:
                    return self.error(400, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.objects[value["oid"]]
            else:
                return self.error(400, f"unexpected operation {line['key']}")
        self.commits.append({"repo_id": repo_id, "revision": revision, "header": lines[0]["value"], "files": files,
                             "modes": {line["value"]["path"]: line["key"] for line in lines[1:]}})
        oid = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
        return http.Response(200, json={"success": True, "commitOid": oid,
                                        "commitUrl": f"https://huggingface.co/{repo_id}/commit/{oid}"})

    def sent(self, endpoint: str) -> int:
        return sum(self.endpoint(method, path) == endpoint for method, path in self.requests)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    mock = MockHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests run with HF_HUB_OFFLINE=1
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # see the module docstring
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    hooks = {"request": [_http.hf_request_event_hook]} if hasattr(_http, "hf_request_event_hook") else {}
    _http.set_client_factory(lambda: http.Client(transport=http.MockTransport(mock.handle), event_hooks=hooks,
                                                 follow_redirects=True))
    yield mock
    _http.set_client_factory(_http.default_client_factory)


@pytest.fixture(scope="module")
def converted(tiny_bert, calibration_file, tmp_path_factory):
    """A published leanbert-convert output (the tiny BERT's Shatter warm start): what a push uploads."""
    output = tmp_path_factory.mktemp("push") / "shatter"
    convert(str(tiny_bert), "shatter", output, calibration_text=calibration_file, refine_steps=0)
    return output


CONVERTED_FILES = ["README.md", "config.json", "configuration_encoder.py", "configuration_shatter.py",
                   "conversion_report.json", "model.safetensors", "modeling_encoder.py", "modeling_shatter.py",
                   "tokenizer.json", "tokenizer_config.json", "transformers_compat.py"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_uploads_the_output_in_one_commit(hub, converted):
    before = snapshot(converted)
    pushed = push_folder(converted, REPO_ID, private=True, revision="experiments", commit_message="Tiny Shatter")
    assert snapshot(converted) == before, "a push never changes the local folder"

    assert hub.repos == {REPO_ID: {"private": True, "branches": {"main", "experiments"}}}
    (commit,) = hub.commits
    assert commit["repo_id"] == REPO_ID and commit["revision"] == "experiments"
    assert commit["header"]["summary"] == "Tiny Shatter"
    assert sorted(commit["files"]) == CONVERTED_FILES  # the manifest stays home
    assert MANIFEST in before and MANIFEST not in commit["files"]
    assert commit["modes"]["model.safetensors"] == "lfsFile" and commit["modes"]["config.json"] == "file"
    assert hub.validated[-1]["tags"] == ["leanbert", "shatter"]  # the card's metadata passed the Hub's check
    for name, content in commit["files"].items():
        if name != "README.md":
            assert content == before[name], name
    # the uploaded card is the local one line for line, except that each snippet's `model_id = "<local placeholder>"`
    # now names the repository; and both snippets (with leanbert, and with trust_remote_code) have one
    local, card = before["README.md"].decode().splitlines(), commit["files"]["README.md"].decode().splitlines()
    assert len(card) == len(local)
    changed = [(old, new) for old, new in zip(local, card) if old != new]
    assert len(changed) == 2, changed
    for old, new in changed:
        assignment = re.fullmatch(r'model_id = "[^"]+"(.*)', old)  # the rest of the line is a comment
        assert assignment and new == f'model_id = "{REPO_ID}"{assignment.group(1)}', (old, new)
    # config.json names, for the config and each of the six heads, the class of the file uploaded beside it
    auto_map = json.loads(commit["files"]["config.json"])["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_shatter.ShatterConfig",
                        **{"AutoModel" + ("" if head == "Model" else head): f"modeling_shatter.Shatter{head}"
                           for head in HEADS}}
    for reference in auto_map.values():
        module, name = reference.split(".")
        assert re.search(rf"^class {name}\(", commit["files"][f"{module}.py"].decode(), flags=re.M), reference
    assert pushed == {"repo_id": REPO_ID, "url": f"https://huggingface.co/{REPO_ID}/tree/experiments",
                      "commit_url": f"https://huggingface.co/{REPO_ID}/commit/{pushed['commit']}",
                      "commit": pushed["commit"], "files": CONVERTED_FILES}

    # a second push to the existing repository, on main, with the default message
    push_folder(converted, REPO_ID)
    assert len(hub.commits) == 2 and hub.commits[1]["revision"] == "main"
    assert hub.commits[1]["header"]["summary"] == (f"Upload ShatterForSequenceClassification written by "
                                                   f"leanbert-convert (leanbert {leanbert.__version__})")


REMOTE_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["leanbert"] = None  # any `import leanbert` now fails
    import transformers

    folder, classes = sys.argv[1], sys.argv[2].split(",")
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__module__.startswith("transformers_modules."), type(config).__module__
    for name in classes:  # a head other than the saved one starts fresh (multiple choice's is one wide)
        own = type(config).__name__.removesuffix("Config") + name.removeprefix("AutoModel") in config.architectures
        model = getattr(transformers, name).from_pretrained(folder, trust_remote_code=True,
                                                            ignore_mismatched_sizes=not own)
        assert type(model).__module__.startswith("transformers_modules."), (name, type(model).__module__)
        print(name, type(model).__name__)
    exec(open(sys.argv[3]).read())  # the card's snippet for remote code
    assert sys.modules["leanbert"] is None
""")


def test_uploaded_repository_loads_with_every_auto_class_without_leanbert(hub, converted, tmp_path):
    """What reached the (mock) Hub, written out as a clone of the repository would be, loads in a fresh process
    where leanbert cannot be imported, with every Auto class of the declaration, and its card's snippet runs."""
    push_folder(converted, REPO_ID)
    clone = tmp_path / "clone"
    for name, content in hub.commits[0]["files"].items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_bytes(content)
    card = (clone / "README.md").read_text()
    remote = [block for block in re.findall(r"```python\n(.*?)```", card, flags=re.S) if "trust_remote_code" in block]
    (tmp_path / "snippet.py").write_text(remote[0].replace(f'"{REPO_ID}"', repr(str(clone))))
    architecture = BY_MODEL_TYPE["shatter"]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, clone, ",".join(architecture.classes),
                             tmp_path / "snippet.py"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = dict(line.split() for line in result.stdout.splitlines() if line.startswith("Auto"))
    assert loaded == {auto: cls.__name__ for auto, cls in architecture.classes.items()}


def test_convert_heal_and_push_from_the_command_line(hub, tiny_bert, calibration_file, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(read_passages()[0][:64]))
    output = tmp_path / "healed"
    code = convert_main([str(a) for a in (
        "--source", tiny_bert, "--to", "shatter", "--output", output, "--calibration-text", calibration_file,
        "--refine-steps", 0, "--heal", "--heal-text", text, "--heal-steps", 2, "--heal-batch-size", 8,
        "--push-to-hub", "alice/shatter-healed", "--commit-message", "healed")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    (commit,) = hub.commits
    url = "https://huggingface.co/alice/shatter-healed"
    assert summary["hub"] == {"repo_id": "alice/shatter-healed", "url": url, "commit": summary["hub"]["commit"],
                              "commit_url": f"{url}/commit/{summary['hub']['commit']}"}
    assert sorted(commit["files"]) == [
        "README.md", "config.json", "configuration_encoder.py", "configuration_shatter.py",
        "conversion_report.json", "healing_curve.json", "healing_curve.png", "model.safetensors",
        "modeling_encoder.py", "modeling_shatter.py", "tokenizer.json", "tokenizer_config.json",
        "transformers_compat.py"]
    assert commit["header"]["summary"] == "healed" and not hub.repos["alice/shatter-healed"]["private"]
    assert commit["modes"]["healing_curve.png"] == "lfsFile"
    assert "after healing" in commit["files"]["README.md"].decode()
    assert hub.sent("whoami") == 1, "the token is checked once, before any work"
    assert not foreign_entries(output), "the published output is intact and leanbert's own"


def test_export_and_push_from_the_command_line(hub, tiny_bert, calibration_file, tmp_path, capsys):
    """An exported BERT is pushed like any leanbert output: a BERT with its leanbert report, no code files; a
    refused token is refused before any export work."""
    convert(str(tiny_bert), "sym_bert", tmp_path / "sym", calibration_text=calibration_file, refine_steps=0)
    assert export_main(["--model", str(tmp_path / "sym"), "--output", str(tmp_path / "bert"),
                        "--push-to-hub", "alice/sym-bert"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (commit,) = hub.commits
    assert summary["hub"]["repo_id"] == "alice/sym-bert" and commit["repo_id"] == "alice/sym-bert"
    assert sorted(commit["files"]) == ["README.md", "config.json", "export_report.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer_config.json"]
    assert json.loads(commit["files"]["config.json"])["model_type"] == "bert"
    assert hub.validated[-1]["tags"] == ["leanbert", "bert", "sym_bert"]
    hub.refuse["whoami"] = 401
    fails_in_one_line(export_main, ["--model", tmp_path / "sym", "--output", tmp_path / "again",
                                    "--push-to-hub", "alice/sym-bert"], "401", capsys)
    assert not (tmp_path / "again").exists()


# ------------------------------------------------------------------------------------------------ bad input


def fails_in_one_line(main, args, expected: str, capsys) -> str:
    """`main(args)` exits 2 with one error line (the last on stderr, after any progress bars of work done)."""
    code = main([str(a) for a in args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert code == 2, lines
    assert errors == lines[-1:] and expected in errors[0], lines
    return errors[0]


def convert_args(tiny_bert, calibration_file, output, repo_id=REPO_ID, *extra):
    return ["--source", tiny_bert, "--to", "shatter", "--output", output, "--calibration-text", calibration_file,
            "--refine-steps", 0, "--push-to-hub", repo_id, *extra]


def test_no_token_is_refused_before_any_work(hub, monkeypatch, tiny_bert, calibration_file, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN")
    output = tmp_path / "out"
    line = fails_in_one_line(convert_main, convert_args(tiny_bert, calibration_file, output), "hf auth login", capsys)
    assert "HF_TOKEN" in line
    assert not output.exists() and hub.requests == []
    with pytest.raises(LeanbertError, match="hf auth login"):
        push_folder(tmp_path, REPO_ID)


@pytest.mark.parametrize("repo_id", ["alice/bad--name", "alice/too/deep", "alice/x.git", "a" * 97])
def test_invalid_repo_id_is_refused_before_any_work(hub, repo_id, tiny_bert, calibration_file, tmp_path, capsys):
    output = tmp_path / "out"
    fails_in_one_line(convert_main, convert_args(tiny_bert, calibration_file, output, repo_id),
                      "not a valid Hub repository id", capsys)
    assert not output.exists() and hub.requests == []


def test_bad_revision_read_only_token_and_stray_flags_are_refused_before_any_work(hub, tiny_bert, calibration_file,
                                                                                 tmp_path, capsys):
    output = tmp_path / "out"
    fails_in_one_line(convert_main, convert_args(tiny_bert, calibration_file, output, REPO_ID, "--revision", "a..b"),
                      "not a valid branch name", capsys)
    hub.role = "read"
    fails_in_one_line(convert_main, convert_args(tiny_bert, calibration_file, output), "read-only", capsys)
    hub.role, hub.refuse["whoami"] = "write", 401
    fails_in_one_line(convert_main, convert_args(tiny_bert, calibration_file, output),
                      "the Hub refused the token (whoami): 401 Unauthorized", capsys)
    args = convert_args(tiny_bert, calibration_file, output)[:-2] + ["--private"]
    fails_in_one_line(convert_main, args, "--private is used only with --push-to-hub", capsys)
    assert not output.exists() and hub.commits == [] and hub.repos == {}


def test_a_folder_that_is_not_a_leanbert_model_is_not_uploaded(hub, tiny_bert, converted, tmp_path):
    with pytest.raises(LeanbertError, match="is not a leanbert model: its config.json has model_type 'bert'"):
        push_folder(tiny_bert, REPO_ID)
    with pytest.raises(LeanbertError, match="no config.json"):
        push_folder(tmp_path, REPO_ID)
    broken = tmp_path / "broken"
    for name, content in snapshot(converted).items():
        if name != "model.safetensors":
            (broken / name).parent.mkdir(parents=True, exist_ok=True)
            (broken / name).write_bytes(content)
    with pytest.raises(LeanbertError, match=r"holds no weights \(model.safetensors\)"):
        push_folder(broken, REPO_ID)
    (broken / "model.safetensors").write_bytes((converted / "model.safetensors").read_bytes())
    (broken / "modeling_encoder.py").unlink()
    with pytest.raises(LeanbertError, match=r"lacks the code files its auto_map needs \(modeling_encoder.py\)"):
        push_folder(broken, REPO_ID)
    assert hub.requests == []


@pytest.mark.parametrize("endpoint, status, expected", [
    ("create", 403, "the Hub refused creating the repository 'alice/shatter-tiny': 403 Forbidden"),
    ("preupload", 401, "the Hub refused the upload to 'alice/shatter-tiny': 401 Unauthorized"),
    ("commit", 403, "the Hub refused the upload to 'alice/shatter-tiny': 403 Forbidden"),
    ("branch", 404, "the Hub refused creating the branch 'exp' of 'alice/shatter-tiny': 404 Not Found"),
])
def test_refusals_of_the_hub_are_one_line_and_keep_the_local_output(hub, converted, endpoint, status, expected):
    before = snapshot(converted)
    hub.refuse[endpoint] = status
    with pytest.raises(LeanbertError) as error:
        push_folder(converted, REPO_ID, revision="exp")
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message
    assert f"the local output {str(converted)!r} is intact" in message
    assert hub.commits == [] and snapshot(converted) == before


def test_an_unreachable_hub_is_one_line(hub, converted):
    hub.refuse["create"] = "unreachable"
    with pytest.raises(LeanbertError, match=r"^cannot reach the Hub at https://huggingface.co for creating the "
                                            r"repository 'alice/shatter-tiny': "
                                            r"ConnectError: \[Errno 111\] Connection refused; the local output .* is "
                                            r"intact$"):
        push_folder(converted, REPO_ID)
    assert hub.commits == []


@pytest.mark.parametrize("endpoint", ["validate", "preupload", "commit"])
def test_an_html_page_in_the_upload_is_named_as_such_not_as_a_refusal(hub, converted, endpoint):
    """A page that is not the Hub's JSON, met once the repository exists (the card's check, the upload, the
    commit), names the endpoint and the page, as it does before: the Hub refused nothing."""
    hub.refuse[endpoint] = "html"
    with pytest.raises(LeanbertError) as error:
        push_folder(converted, REPO_ID)
    message = str(error.value)
    assert message.startswith("the Hub at https://huggingface.co answered the upload to 'alice/shatter-tiny' with "
                              "something that is not the Hub's JSON"), message
    assert "\n" not in message and message.endswith(f"the local output {str(converted)!r} is intact")
    assert hub.commits == []


def test_private_push_to_an_existing_public_repository_is_refused(hub, converted):
    hub.repos[REPO_ID] = {"private": False, "branches": {"main"}}
    with pytest.raises(LeanbertError, match="exists and is public; nothing was uploaded"):
        push_folder(converted, REPO_ID, private=True)
    assert hub.commits == [] and hub.sent("preupload") == 0


def test_a_foreign_namespace_or_a_public_repository_for_private_is_refused_before_any_work(
        hub, tiny_bert, calibration_file, tmp_path, capsys):
    """What the Hub would refuse only when the result is pushed (403 from create_repo for a namespace that is neither
    the user nor one of its organisations, a public repository for --private) is refused before the conversion, from
    whoami and the repository's info; the Hub's names ignore case, and so does the check."""
    output = tmp_path / "out"
    fails_in_one_line(convert_main, convert_args(tiny_bert, calibration_file, output, "bob/model"),
                      "cannot push to 'bob/model': 'bob' is neither the token's user ('alice') nor one of its "
                      "organisations (LeanLab, watchers)", capsys)
    hub.repos["alice/public-model"] = {"private": False, "branches": {"main"}}
    fails_in_one_line(convert_main, convert_args(tiny_bert, calibration_file, output, "alice/public-model",
                                                 "--private"),
                      "--private: the repository 'alice/public-model' exists and is public", capsys)
    assert not output.exists() and hub.sent("create") == 0 and hub.commits == []
    assert convert_main([str(a) for a in convert_args(tiny_bert, calibration_file, output, "leanlab/model",
                                                      "--private")]) == 0, capsys.readouterr().err
    assert hub.repos["leanlab/model"]["private"] and [c["repo_id"] for c in hub.commits] == ["leanlab/model"]


def test_a_refused_push_after_conversion_exits_2_and_keeps_the_output(hub, tiny_bert, calibration_file, tmp_path,
                                                                      capsys):
    hub.refuse["create"] = 403
    output = tmp_path / "out"
    line = fails_in_one_line(convert_main, convert_args(tiny_bert, calibration_file, output), "403 Forbidden", capsys)
    assert "the Hub refused creating the repository" in line and "is intact" in line
    assert (output / "model.safetensors").is_file() and (output / "README.md").is_file()
    assert not foreign_entries(output), "the output is published, complete and leanbert's own"
    assert hub.commits == [] and hub.sent("preupload") == 0


# ------------------------------------------------------------------------------------- an endpoint that fails


class BadEndpoint:
    """A real HTTP endpoint on a local socket, for HF_ENDPOINT: the Hub's HTTP boundary, which these tests cannot
    reach, as a user meets it broken. "refuse": nothing listens (connection refused); "stall": connections are
    accepted and never answered; "html": every request is answered 200 with an HTML page (a proxy's or captive
    portal's)."""

    PAGE = b"<html><body>Please log in to the network</body></html>"

    def __init__(self, mode: str):
        self.mode, self.held, self.served = mode, [], 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        if mode == "refuse":
            self.server.close()
        else:
            threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:  # closed
                return
            self.served += 1
            if self.mode == "stall":
                self.held.append(connection)
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(self.PAGE), self.PAGE))

    def close(self):
        self.server.close()
        for connection in self.held:
            connection.close()


@pytest.fixture(params=["refuse", "stall", "html"])
def bad_endpoint(request, monkeypatch, tmp_path):
    """huggingface_hub's real client talking to a `BadEndpoint`, with 1-second timeouts (HF_HUB_ETAG_TIMEOUT and
    HF_HUB_DOWNLOAD_TIMEOUT): what HF_ENDPOINT sets, set in-process."""
    endpoint = BadEndpoint(request.param)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(models, "CHECKED_ON_HUB", set())
    _http.set_client_factory(_http.default_client_factory)
    yield endpoint
    endpoint.close()
    _http.close_session()


EXPECTED = {"refuse": "ConnectError", "stall": "ReadTimeout", "html": "with something that is not the Hub's JSON"}


@pytest.mark.parametrize("where", ["push", "source"])
def test_an_unreachable_stalled_or_html_hub_is_one_line_before_any_work(bad_endpoint, where, tiny_bert,
                                                                         calibration_file, tmp_path, capsys):
    """--push-to-hub's check, and a source given by Hub id, meet the endpoint first: one line naming it, within the
    timeouts, and nothing written."""
    output = tmp_path / "out"
    args = convert_args(tiny_bert, calibration_file, output)
    if where == "source":
        args = convert_args("org/bert", calibration_file, output)[:-2]
    started = time.monotonic()
    line = fails_in_one_line(convert_main, args, EXPECTED[bad_endpoint.mode], capsys)
    assert f"the Hub at {bad_endpoint.url}" in line
    assert time.monotonic() - started < 15, "one request, within the timeouts, not transformers' back-off"
    assert not output.exists() and not (tmp_path / ".out.leanbert-lock").exists()
    assert bad_endpoint.mode == "refuse" or bad_endpoint.served >= 1


def test_a_hub_that_fails_after_the_output_is_written_keeps_it(bad_endpoint, converted):
    before = snapshot(converted)
    with pytest.raises(LeanbertError) as error:
        push_folder(converted, REPO_ID)
    message = str(error.value)
    assert f"the Hub at {bad_endpoint.url}" in message and EXPECTED[bad_endpoint.mode] in message
    assert "\n" not in message and message.endswith(f"the local output {str(converted)!r} is intact")
    assert snapshot(converted) == before


def test_a_stalled_hf_endpoint_ends_the_command_line_in_one_line(tmp_path, calibration_file):
    """The whole command in a process of its own, given the endpoint by HF_ENDPOINT as a user would: exit 2 and one
    line, well before the default 10-second timeouts would have run out twice."""
    endpoint = BadEndpoint("stall")
    env = {**os.environ, "HF_ENDPOINT": endpoint.url, "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2",
           "HF_HUB_DOWNLOAD_TIMEOUT": "2", "HF_TOKEN_PATH": str(tmp_path / "no-token-file")}
    try:
        done = subprocess.run([sys.executable, "-m", "leanbert.commands.pretrain", "--model", "org/model",
                               "--train-file", calibration_file, "--output", tmp_path / "out"],
                              env=env, capture_output=True, text=True, timeout=120)
    finally:
        endpoint.close()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"leanbert-pretrain: error: cannot reach the Hub at {endpoint.url} for model "
                               "'org/model': ReadTimeout"), lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_endpoint", ["refuse"], indirect=True)
def test_a_misnamed_local_folder_is_named_when_the_hub_cannot_be_reached(bad_endpoint, tmp_path, monkeypatch):
    """`--tokenizer mytok` with no folder `mytok`: it is looked up as a Hub id, and the line says that there is no
    such folder either, not only that the Hub cannot be reached."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LeanbertError) as error:
        models.load_tokenizer("mytok", "tokenizer", 1000)
    message = str(error.value)
    assert message.startswith(f"cannot reach the Hub at {bad_endpoint.url} for tokenizer 'mytok': ConnectError")
    assert "no folder 'mytok' is here either" in message


@pytest.mark.parametrize("bad_endpoint", ["refuse"], indirect=True)
def test_a_model_in_the_hub_cache_loads_when_the_hub_cannot_be_reached(bad_endpoint, tiny_bert, tmp_path,
                                                                        monkeypatch):
    """As transformers falls back on the Hub cache without a network, so does the check before it: a model id
    whose snapshot the cache holds (HF_HUB_CACHE, laid out as huggingface_hub lays it out) loads from there with
    the endpoint refusing connections, instead of being refused."""
    cache = tmp_path / "hub"
    snapshot_folder = cache / "models--org--cached" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_bert, snapshot_folder)
    (cache / "models--org--cached" / "refs").mkdir()
    (cache / "models--org--cached" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    models.check_on_hub("org/cached", "model")  # no error: the cache has it
    with pytest.raises(LeanbertError, match="cannot reach the Hub"):
        models.check_on_hub("org/not-cached", "model")
