"""Publishing a leanbert output folder on the Hugging Face Hub: checked before anything is sent, one commit.

`check_access(repo_id, revision=..., private=...)` runs before any work (the commands call it before converting or
training): the repository id and branch are well formed, a token is available (`hf auth login` or HF_TOKEN), the Hub
is not switched off (HF_HUB_OFFLINE) and accepts the token (`whoami`; a read-only token is refused), the namespace is
the token's user or one of its organisations, and with `private` the repository is not a public one.
`push_folder(folder, repo_id, ...)` checks the folder is a leanbert model (config.json with a leanbert
`model_type` and the full `auto_map` with its code files, or a BERT with a leanbert report; weights; a tokenizer),
creates the repository if needed (`create_repo(exist_ok=True)`; with `private=True` an existing public repository
is refused rather than published to), creates the branch if `revision` names a missing one, and uploads everything
in the folder except leanbert's bookkeeping (the manifest `.leanbert-output.json`, `.leanbert-*` files, temporary
`.*.tmp-<pid>` files) in ONE commit. The model card goes up with its snippets pointing at the repository
(`cards.for_repo`); the local folder is never changed.

Every refusal is one `LeanbertError`: "the Hub refused ...: <status> <reason>" for an HTTP error (401, 403, 404, a
refused commit), "cannot reach the Hub at <HF_ENDPOINT>" for the network (refused, or silent past the timeouts
`common.models.hub_timeouts` gives every request), "the Hub at <HF_ENDPOINT> answered ... with something that is not
the Hub's JSON" for a proxy's or portal's page. The local output is untouched either way.
"""

import contextlib
import json
import re
from pathlib import Path

from .. import __version__
from ..architectures import ARCHITECTURES
from ..common.errors import LeanbertError, first_line
from ..common.models import VOCABULARY_FILES, hub_timeouts
from ..common.output import MANIFEST, STAGING_MARK
from .cards import CARD, EXPORT_REPORT, REPORTS, for_repo

TEMPORARY = re.compile(r"\..+\.tmp-\d+")  # common.output.write_text_atomically's temporary files
NOT_UPLOADED_FOLDERS = (".git", ".cache")  # as upload_folder skips them
TOKEN_HELP = "run `hf auth login` or set HF_TOKEN to a token with write access"

try:  # huggingface_hub 2.x speaks through httpx2, 1.x through httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import TransportError


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        raise LeanbertError(f"{repo_id!r} is not a valid Hub repository id ('user/model' or 'model')")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise LeanbertError(f"{repo_id!r} is not a valid Hub repository id ('user/model' or 'model'): "
                            f"{first_line(error)}") from None


def check_revision(revision: str | None) -> None:
    """A branch name git and the Hub accept (git check-ref-format's rules, in short)."""
    if revision is None:
        return
    bad = (not revision or revision.startswith(("/", ".", "-")) or revision.endswith(("/", ".", ".lock"))
           or ".." in revision or "//" in revision or "@{" in revision
           or any(c in revision for c in " ~^:?*[\\") or any(ord(c) < 32 or ord(c) == 127 for c in revision))
    if bad:
        raise LeanbertError(f"--revision {revision!r} is not a valid branch name")


def hub_token(token: str | None = None) -> str:
    """The token to push with: `token`, else what huggingface_hub finds (HF_TOKEN, the `hf auth login` file)."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise LeanbertError("pushing to the Hub needs the network, but HF_HUB_OFFLINE is set; unset it to push, "
                            "or leave out --push-to-hub")
    if token is None:
        try:
            token = get_token()
        except Exception as error:  # an OIDC exchange that failed, say
            raise LeanbertError(f"no Hugging Face token: {first_line(error)}; {TOKEN_HELP}") from None
    if not token:
        raise LeanbertError(f"pushing to the Hub needs a Hugging Face token and none was found: {TOKEN_HELP}")
    return token


@contextlib.contextmanager
def hub_errors(action: str, folder: Path | None = None):
    """Turn the Hub's refusals, network failures and answers that are not its JSON inside the block into one
    `LeanbertError` naming the endpoint (HF_ENDPOINT); every request has `hub_timeouts`' limits, so none hangs."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    hub_timeouts()
    where = f"the Hub at {constants.ENDPOINT}"
    kept = f"; the local output {str(folder)!r} is intact" if folder is not None else ""
    try:
        yield
    except HfHubHTTPError as error:
        response = getattr(error, "response", None)
        status = (f"{response.status_code} {response.reason_phrase}".strip() if response is not None
                  else first_line(error))
        detail = first_line(Exception(error.server_message)) if getattr(error, "server_message", None) else ""
        if detail and detail not in status:
            status += f" ({detail})"
        hint = f"; {TOKEN_HELP}" if response is not None and response.status_code == 401 else ""
        raise LeanbertError(f"the Hub refused {action}: {status}{hint}{kept}") from None
    except OfflineModeIsEnabled:
        raise LeanbertError(f"cannot reach the Hub for {action}: HF_HUB_OFFLINE is set{kept}") from None
    except TransportError as error:
        raise LeanbertError(f"cannot reach {where} for {action}: {type(error).__name__}: "
                            f"{first_line(error) or 'no answer'}{kept}") from None
    except ValueError as error:  # a proxy's or captive portal's HTML page where the Hub's JSON was expected
        raise LeanbertError(f"{where} answered {action} with something that is not the Hub's JSON "
                            f"({first_line(error)}); check HF_ENDPOINT and any proxy{kept}") from None
    except OSError as error:
        raise LeanbertError(f"{action} failed: {type(error).__name__}: {first_line(error)}{kept}") from None


def check_access(repo_id: str, *, revision: str | None = None, token: str | None = None,
                 private: bool = False) -> str:
    """Everything about a push that can be checked before any work: the id, the branch, the token and that the Hub
    takes it, that the repository's namespace is the token's user or one of its organisations, and with `private`
    that the repository is not an existing public one. Returns the token."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    check_repo_id(repo_id)
    check_revision(revision)
    token = hub_token(token)
    api = HfApi(token=token)
    with hub_errors("the token (whoami)"):
        who = api.whoami()
    who = who if isinstance(who, dict) else {}
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise LeanbertError(f"the Hugging Face token of {who.get('name')!r} is read-only; {TOKEN_HELP}")
    user = who.get("name") if isinstance(who.get("name"), str) else None
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    orgs = [org["name"] for org in who.get("orgs") or [] if isinstance(org, dict) and isinstance(org.get("name"), str)]
    # the Hub's names ignore case; an organisation member's write access may come from a resource group, so the
    # member's role is left for the Hub to judge
    if user and isinstance(who.get("orgs"), list) and namespace.casefold() not in {n.casefold() for n in [user, *orgs]}:
        raise LeanbertError(f"cannot push to {repo_id!r}: {namespace!r} is neither the token's user ({user!r}) nor one "
                            f"of its organisations ({', '.join(orgs) or 'none'})")
    if private and namespace:
        full_id = repo_id if "/" in repo_id else f"{namespace}/{repo_id}"
        with hub_errors(f"reading the repository {full_id!r}"):
            try:
                public = api.repo_info(full_id, repo_type="model").private is False
            except RepositoryNotFoundError:  # it will be created, private
                public = False
        if public:
            raise LeanbertError(f"--private: the repository {full_id!r} exists and is public; make it private on the "
                                "Hub, or push elsewhere")
    return token


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LeanbertError(f"{str(folder)!r} is not a model folder: it has no config.json") from None
    except (OSError, ValueError) as error:
        raise LeanbertError(f"cannot read {str(folder / 'config.json')!r}: {first_line(error)}") from None
    if not isinstance(config, dict):
        raise LeanbertError(f"{str(folder / 'config.json')!r} is not a JSON object")
    return config


def code_files(folder: Path, modules: set[str]) -> set[str]:
    """The `.py` files `modules` need, with what they import by single-dot relative imports (as remote code
    copies them); missing ones are returned as they are, so the caller names them."""
    needed, todo = set(), list(modules)
    while todo:
        name = f"{todo.pop()}.py"
        if name in needed:
            continue
        needed.add(name)
        if (folder / name).is_file():
            todo += re.findall(r"^\s*from\s+\.(\w+)\s+import\b", (folder / name).read_text(encoding="utf-8"), re.M)
    return needed


def check_model_folder(folder: str | Path) -> None:
    """Refuse what is not a leanbert model a Hub user could load: see the module docstring."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LeanbertError(f"{str(folder)!r} is not a folder")
    config = read_config(folder)
    model_type = config.get("model_type")
    architecture = next((a for a in ARCHITECTURES if a.model_type == model_type), None)
    reports = (*REPORTS, EXPORT_REPORT)
    if architecture is None and not (model_type == "bert" and any((folder / r).is_file() for r in reports)):
        raise LeanbertError(f"{str(folder)!r} is not a leanbert model: its config.json has model_type "
                            f"{model_type!r} and it holds no leanbert report ({', '.join(reports)})")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise LeanbertError(f"cannot read {str(index)!r}: {first_line(error)}") from None
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            raise LeanbertError(f"{str(folder)!r} lacks weight files its index names: {', '.join(missing)}")
    elif not (folder / "model.safetensors").is_file():
        raise LeanbertError(f"{str(folder)!r} holds no weights (model.safetensors)")
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise LeanbertError(f"{str(folder)!r} holds no tokenizer (none of {', '.join(VOCABULARY_FILES)})")
    if architecture is None:
        return
    auto_map = config.get("auto_map")
    wanted = {"AutoConfig", *architecture.classes}
    if not isinstance(auto_map, dict) or not wanted <= set(auto_map):
        lacking = sorted(wanted - set(auto_map if isinstance(auto_map, dict) else ()))
        raise LeanbertError(f"the config.json of {str(folder)!r} lacks auto_map entries ({', '.join(lacking)}), so "
                            "the model would not load without leanbert; save it again with leanbert")
    modules = {str(value).split("--")[-1].rsplit(".", 1)[0] for key, value in auto_map.items() if key in wanted}
    missing = sorted(name for name in code_files(folder, modules) if not (folder / name).is_file())
    if missing:
        raise LeanbertError(f"{str(folder)!r} lacks the code files its auto_map needs ({', '.join(missing)}); "
                            "save it again with leanbert")


def files_to_upload(folder: str | Path) -> list[str]:
    """Every file under `folder` (relative POSIX paths, sorted) except leanbert's bookkeeping and what
    upload_folder never uploads (.git/, .cache/)."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        parts = relative.parts
        if not path.is_file() or parts[0] in NOT_UPLOADED_FOLDERS:
            continue
        if relative.as_posix() in (MANIFEST, STAGING_MARK) or any(part.startswith(".leanbert") for part in parts) \
                or TEMPORARY.fullmatch(parts[-1]):
            continue
        found.append(relative.as_posix())
    return found


def default_commit_message(folder: Path) -> str:
    try:
        command = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        command = None
    model = (read_config(folder).get("architectures") or ["model"])[0]
    return f"Upload {model}" + (f" written by {command}" if command else "") + f" (leanbert {__version__})"


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None) -> dict:
    """Upload the leanbert output `folder` to the Hub model repository `repo_id` in one commit (see the module
    docstring); returns {"repo_id", "url", "commit_url", "commit", "files"}."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    check_repo_id(repo_id)
    check_revision(revision)
    token = hub_token(token)
    check_model_folder(folder)
    names = files_to_upload(folder)
    message = commit_message or default_commit_message(folder)
    api = HfApi(token=token)
    with hub_errors(f"creating the repository {repo_id!r}", folder):
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    repo_id = getattr(url, "repo_id", None) or repo_id  # with the user's namespace when none was given
    if private:
        with hub_errors(f"reading the repository {repo_id!r}", folder):
            public = not api.repo_info(repo_id, repo_type="model").private
        if public:
            raise LeanbertError(f"--private: the repository {repo_id!r} exists and is public; nothing was uploaded "
                                f"(make it private on the Hub, or push elsewhere); the local output {str(folder)!r} "
                                "is intact")
    if revision is not None and revision != "main":
        with hub_errors(f"creating the branch {revision!r} of {repo_id!r}", folder):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    operations = []
    for name in names:
        content = str(folder / name)
        if name == CARD:
            text = (folder / name).read_text(encoding="utf-8")
            content = for_repo(text, repo_id).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    with hub_errors(f"the upload to {repo_id!r}", folder):
        try:
            commit = api.create_commit(repo_id, operations, commit_message=message, revision=revision,
                                       repo_type="model")
        except json.JSONDecodeError:  # a proxy's or portal's page, not a refusal: `hub_errors` names the endpoint
            raise
        except ValueError as error:  # the Hub refused the card's metadata, or garbled an answer
            reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise LeanbertError(f"the Hub refused the upload to {repo_id!r}: {reason}; the local output "
                                f"{str(folder)!r} is intact") from None
    location = str(url).rstrip("/") + (f"/tree/{revision}" if revision else "")
    return {"repo_id": repo_id, "url": location, "commit_url": commit.commit_url, "commit": commit.oid,
            "files": names}
