"""``helixctl diagnose``'s verdicts: gathered facts in, checks (and their fixes) out."""

from __future__ import annotations

import json

import pytest

from helixctl.diagnose_rules import (
    GIB,
    MIB,
    BinaryFacts,
    Check,
    ConfigFacts,
    DiskFacts,
    GpuFact,
    ModelFileFacts,
    NvmlFacts,
    SystemdFacts,
    exit_code,
    folders_text,
    judge_binary,
    judge_config,
    judge_disk,
    judge_model_file,
    judge_nvml,
    judge_systemd,
    render,
    tally,
    version_line,
)
from helixctl.diagnose_rules_net import (
    EndpointFacts,
    PortFacts,
    SocketFacts,
    endpoint_url,
    judge_endpoint,
    judge_port,
    judge_same_config,
    judge_socket,
)

H100 = GpuFact(0, "NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB)

# -- NVIDIA -------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["no_module", "no_driver"])
def test_no_gpu_at_all_is_ram_only_mode_not_a_failure(outcome: str) -> None:
    checks = judge_nvml(NvmlFacts(outcome, error="NVML Shared Library Not Found"))
    assert checks == [Check("nvidia", "info", "no NVIDIA GPU; helixd runs in RAM-only mode")]


def test_a_gpu_device_without_a_working_driver_is_a_problem() -> None:
    facts = NvmlFacts("no_driver", ("/dev/nvidia0",), error="Driver Not Loaded")
    (check,) = judge_nvml(facts)
    assert check.status == "problem"
    assert "/dev/nvidia0" in check.message and "Driver Not Loaded" in check.message
    assert check.fix is not None and "nvidia-smi" in check.fix


def test_a_gpu_device_without_nvidia_ml_py_is_a_problem() -> None:
    facts = NvmlFacts("no_module", ("/dev/nvidia0",), error="No module named 'pynvml'")
    (check,) = judge_nvml(facts)
    assert check.status == "problem" and check.fix is not None
    assert "pip install nvidia-ml-py" in check.fix


@pytest.mark.parametrize(
    ("error", "fix_says"),
    [
        ("RM has detected an NVML/RM version mismatch.", "reboot"),
        ("Insufficient Permissions", "usermod -aG video,render"),
    ],
)
def test_nvml_failures_get_the_fix_for_their_cause(error: str, fix_says: str) -> None:
    (check,) = judge_nvml(NvmlFacts("error", error=error))
    assert check.status == "problem"
    assert check.message.startswith("NVML cannot start: ")
    assert ".;" not in check.message
    assert check.fix is not None and fix_says in check.fix


def test_working_nvml_lists_versions_and_one_line_per_gpu() -> None:
    second = GpuFact(1, "NVIDIA L4", 24 * GIB, 12 * GIB)
    facts = NvmlFacts(
        "ok", ("/dev/nvidia0",), driver_version="550.54.15", nvml_version="12.550.54.15",
        gpus=(H100, second),
    )  # fmt: skip
    assert judge_nvml(facts) == [
        Check("nvidia", "ok", "driver 550.54.15, NVML 12.550.54.15; 2 GPUs"),
        Check("gpu0", "ok", "NVIDIA H100 80GB HBM3: 79.0 GiB free of 80.0 GiB"),
        Check("gpu1", "ok", "NVIDIA L4: 12.0 GiB free of 24.0 GiB"),
    ]


def test_an_unreadable_gpu_and_a_selection_of_a_missing_one_are_problems() -> None:
    facts = NvmlFacts("ok", gpus=(H100,), unreadable=((1, "GPU is lost"),), selection=(0, 1, 3))
    checks = judge_nvml(facts)
    assert [(c.check, c.status) for c in checks] == [
        ("nvidia", "ok"),
        ("gpu0", "ok"),
        ("gpu1", "problem"),
        ("gpus", "problem"),
    ]
    assert "driver version unknown, NVML version unknown" in checks[0].message
    assert "GPU is lost" in checks[2].message
    assert "selects GPU 3," in checks[3].message and "(GPUs: 0, 1)" in checks[3].message


def test_gpus_none_in_the_config_is_said() -> None:
    checks = judge_nvml(NvmlFacts("ok", gpus=(H100,), selection="none"))
    assert checks[-1] == Check("gpus", "info", 'resources.gpus = "none": helixd uses host RAM only')


# -- config, programs, model files --------------------------------------------------------


def test_no_config_says_where_it_looked_and_how_to_make_one() -> None:
    check = judge_config(ConfigFacts(None, "", looked_at=("/a.toml", "/b.toml")))
    assert check.status == "problem"
    assert check.message == "no config file: looked at /a.toml and /b.toml"
    assert check.fix is not None and "helixctl init" in check.fix


def test_an_invalid_config_shows_the_validators_words() -> None:
    error = "helixd.toml: providers.echo.restart: expected one of always, on-failure, never"
    check = judge_config(ConfigFacts("/etc/helixd/helixd.toml", "system default", error=error))
    assert check.status == "problem"
    assert check.message.splitlines()[1] == error
    assert check.fix is not None and "helixctl config check /etc/helixd/helixd.toml" in check.fix


def test_a_valid_config_says_where_it_came_from() -> None:
    check = judge_config(ConfigFacts("/c.toml", "--config", summary="1 provider: echo"))
    assert check == Check("config", "ok", "/c.toml (--config): valid; 1 provider: echo")


def test_a_missing_program_is_named_with_the_kinds_install_hint() -> None:
    long_path = ":".join(f"/opt/tool{i}/bin" for i in range(12))
    check = judge_binary(BinaryFacts("llama", "llamacpp", "llama-server", searched=long_path))
    assert check.check == "provider llama" and check.status == "problem"
    assert check.message.startswith("command not found: 'llama-server' (not on PATH /opt/tool0")
    assert "(12 folders)" in check.message and len(check.message) < 140
    assert check.fix is not None
    assert "llama-server" in check.fix and "providers.llama.command" in check.fix


def test_a_missing_program_given_by_path_is_no_such_file() -> None:
    check = judge_binary(BinaryFacts("x", "openai", "/opt/x/serve"))
    assert check.message == "command not found: '/opt/x/serve' (no such file)"


@pytest.mark.parametrize(
    ("facts", "status", "message"),
    [
        (
            BinaryFacts("o", "ollama", "ollama", "/usr/bin/ollama", version="ollama version 0.5"),
            "ok",
            "/usr/bin/ollama: ollama version 0.5",
        ),
        (
            BinaryFacts(
                "v", "vllm", "vllm", "/v/bin/vllm", version_note="--version did not finish"
            ),
            "ok",
            "/v/bin/vllm (version unknown: --version did not finish)",
        ),
        (
            BinaryFacts("s", "openai", "./serve", "/srv/serve", executable=False),
            "problem",
            "/srv/serve is not an executable file",
        ),
        (
            BinaryFacts("r", "remote", "", remote_url="http://10.0.0.5:8000"),
            "ok",
            "remote at http://10.0.0.5:8000; helixd does not run it",
        ),
        (
            BinaryFacts("t", "openai", "{model_path}", templated=True),
            "info",
            "'{model_path}' is filled in per model; not checked",
        ),
    ],
)
def test_program_verdicts(facts: BinaryFacts, status: str, message: str) -> None:
    check = judge_binary(facts)
    assert (check.status, check.message) == (status, message)


@pytest.mark.parametrize(
    ("output", "line"),
    [
        ("Python 3.11.7\n", "Python 3.11.7"),
        (
            "Warning: could not connect to a running Ollama instance\n"
            "Warning: client version is 0.5.7\n",
            "Warning: client version is 0.5.7",
        ),
        (
            "version: 4567 (0b4be4c4)\nbuilt with cc (Debian 12.2.0) 12.2.0\n",
            "version: 4567 (0b4be4c4)",
        ),
        ("usage: serve [-h]\nerror: unrecognized arguments\n", None),
        ("", None),
        ("v" + "1" * 200, "v" + "1" * 78 + "…"),
    ],
)
def test_version_line(output: str, line: str | None) -> None:
    assert version_line(output) == line


def test_model_files() -> None:
    missing = judge_model_file(ModelFileFacts("coder", "/models/c.gguf", False, False))
    assert (missing.check, missing.status) == ("model coder", "problem")
    assert missing.fix == "put the model file there, or correct models.coder.path"
    closed = judge_model_file(ModelFileFacts("c", "/m", True, False, is_dir=True, user="bob"))
    assert closed.message == "/m exists but bob cannot read it"
    assert closed.fix is not None and "folder" in closed.fix
    assert judge_model_file(ModelFileFacts("c", "/m.gguf", True, True)).status == "ok"
    hidden = ModelFileFacts("c", "/srv/m.gguf", False, False, user="bob", error="Permission denied")
    check = judge_model_file(hidden)
    assert check.status == "warning"
    assert check.message == "cannot look at /srv/m.gguf as bob: Permission denied"


# -- ports --------------------------------------------------------------------------------


def test_a_free_port_and_one_held_by_helixd_itself_are_fine() -> None:
    free = judge_port(PortFacts("proxy.listen", "127.0.0.1", 11400, True))
    assert free == Check("port 11400", "ok", "127.0.0.1:11400 (proxy.listen): free")
    ours = judge_port(
        PortFacts(
            "providers.ollama.port", "127.0.0.1", 11434, False, holder_pid=42,
            holder_name="ollama", holder_is_ours=True, holder_role="helixd's provider ollama",
        )
    )  # fmt: skip
    assert ours.status == "ok"
    assert ours.message.endswith("in use by helixd's provider ollama (pid 42)")


def test_a_port_held_by_someone_else_names_the_holder_and_the_fix() -> None:
    facts = PortFacts(
        "providers.echo.port", "127.0.0.1", 8080, False, holder_pid=4242, holder_name="nginx"
    )
    check = judge_port(facts, "/etc/helixd/helixd.toml")
    assert check.status == "problem"
    assert check.message == "127.0.0.1:8080 (providers.echo.port): taken by nginx (pid 4242)"
    assert check.fix == (
        "stop nginx (kill 4242), or change providers.echo.port in /etc/helixd/helixd.toml "
        "(or set it to 'auto')"
    )


def test_a_port_held_by_another_helixd() -> None:
    facts = PortFacts(
        "proxy.listen", "127.0.0.1", 11400, False, holder_pid=7, holder_name="helixd",
        holder_looks_like_helixd=True,
    )  # fmt: skip
    check = judge_port(facts)
    assert check.status == "problem" and "another helixd (pid 7)" in check.message
    assert check.fix is not None and "auto" not in check.fix  # listen has no 'auto'


def test_a_holder_this_user_cannot_see() -> None:
    unknown = judge_port(PortFacts("proxy.listen", "0.0.0.0", 11400, False))
    assert unknown.status == "problem"
    assert unknown.fix is not None and "ss -ltnp" in unknown.fix
    hidden = judge_port(PortFacts("proxy.listen", "0.0.0.0", 11400, False, daemon_hidden=True))
    assert hidden.status == "warning" and "probably the running helixd" in hidden.message


def test_a_port_that_cannot_be_bound_at_all() -> None:
    check = judge_port(PortFacts("proxy.listen", "0.0.0.0", 80, False, "Permission denied"))
    assert check.status == "problem" and "cannot listen there: Permission denied" in check.message
    assert check.fix is not None and "below 1024" in check.fix


# -- the control socket -------------------------------------------------------------------


def test_socket_answering() -> None:
    daemon = {"version": "0.1.0", "mode": "user", "pid": 99}
    check = judge_socket(SocketFacts("/s", ("/s",), "ok", daemon=daemon))
    assert check == Check("control socket", "ok", "helixd 0.1.0 (user mode), pid 99, answers on /s")


def test_a_helixd_of_another_config_is_a_warning() -> None:
    assert judge_same_config("/a/helixd.toml", "/a/./helixd.toml") is None
    assert judge_same_config(None, "/a.toml") is None
    assert judge_same_config("relative.toml", "/a.toml") is None  # relative to what? unknown
    check = judge_same_config("/a.toml", "/b.toml")
    assert check is not None and check.status == "warning"
    assert check.message.startswith("the helixd that answers runs /a.toml, not /b.toml")


def test_socket_missing_lists_where_it_looked() -> None:
    check = judge_socket(SocketFacts("/a", ("/a", "/b"), "missing"))
    assert check.status == "problem"
    assert check.message == "helixd is not running: no control socket at /a or /b"
    assert check.fix is not None and "systemctl start helixd" in check.fix


def test_stale_socket() -> None:
    check = judge_socket(SocketFacts("/a", ("/a",), "stale"))
    assert "nothing answers" in check.message and check.fix is not None


@pytest.mark.parametrize(
    ("now", "listed", "fix_says"),
    [
        (False, False, "sudo usermod -aG helixd $USER', then log in again"),
        (False, True, "log in again (or 'newgrp helixd')"),
        (True, True, "socket_mode"),
    ],
)
def test_permission_denied_says_what_to_do_about_the_group(
    now: bool, listed: bool, fix_says: str
) -> None:
    facts = SocketFacts(
        "/run/helixd/helixd.sock", (), "denied", group="helixd", owner="helixd", user="bob",
        in_group_now=now, in_group_listed=listed,
    )  # fmt: skip
    check = judge_socket(facts)
    assert check.message == "permission denied on /run/helixd/helixd.sock"
    assert check.fix is not None and fix_says in check.fix


# -- disk, systemd, endpoint --------------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "total", "status"),
    [
        (50 * GIB, 100 * GIB, "ok"),
        (2 * GIB, 100 * GIB, "warning"),  # 2 %
        (900 * MIB, 4 * GIB, "warning"),  # under 1 GiB
        (50 * MIB, 4 * GIB, "problem"),
        (0, 0, "ok"),  # not measurable
    ],
)
def test_disk_thresholds(free: int, total: int, status: str) -> None:
    check = judge_disk(DiskFacts((("state dir", "/var/lib/helixd"),), "/var", free, total))
    assert check.status == status
    assert "state dir /var/lib/helixd" in check.message
    assert (check.fix is None) == (status == "ok")


def test_disk_that_cannot_be_measured() -> None:
    check = judge_disk(DiskFacts((("log dir", "/x"),), "/x", error="Permission denied"))
    assert check.status == "warning" and "Permission denied" in check.message


@pytest.mark.parametrize(
    ("folders", "text"),
    [
        (
            [
                ("state dir", "/s/helixd"),
                ("log dir", "/s/helixd/logs"),
                ("backups", "/s/helixd/backups"),
            ],
            "state dir /s/helixd (with logs/, backups/)",
        ),
        (
            [
                ("state dir", "/var/lib/helixd"),
                ("log dir", "/var/log/helixd"),
                ("backups", "/var/lib/helixd/backups"),
            ],
            "state dir /var/lib/helixd (with backups/) and log dir /var/log/helixd",
        ),
        ([("a", "/a"), ("b", "/b"), ("c", "/c")], "a /a, b /b, c /c"),
        ([("a", "/ab"), ("b", "/a")], "a /ab and b /a"),
    ],
)
def test_folders_text(folders: list[tuple[str, str]], text: str) -> None:
    assert folders_text(tuple(folders)) == text


@pytest.mark.parametrize(
    ("active", "enabled", "running", "status", "fix_says"),
    [
        ("active", "enabled", True, "ok", None),
        ("failed", "enabled", False, "problem", "journalctl -u helixd"),
        ("inactive", "enabled", False, "warning", "sudo systemctl start helixd"),
        ("inactive", "disabled", False, "warning", "enable --now"),
        ("inactive", "disabled", True, "info", None),
        ("activating", "enabled", False, "warning", "again"),
    ],
)
def test_systemd_states(
    active: str, enabled: str, running: bool, status: str, fix_says: str | None
) -> None:
    facts = SystemdFacts("/lib/systemd/system/helixd.service", active, enabled, "", running)
    check = judge_systemd(facts)
    assert check.status == status
    assert f"{active}, {enabled}" in check.message
    assert (check.fix is None) if fix_says is None else (fix_says in (check.fix or ""))


def test_systemd_that_cannot_answer_is_only_a_note() -> None:
    facts = SystemdFacts("/lib/systemd/system/helixd.service", "", "", "System has not been booted")
    assert judge_systemd(facts).status == "info"


@pytest.mark.parametrize(
    ("facts", "status", "says"),
    [
        (EndpointFacts("http://h:1", 200, 3, daemon="running"), "ok", "(lists 3 model names)"),
        (EndpointFacts("http://h:1", 200, daemon="down"), "warning", "another server"),
        (EndpointFacts("http://h:1", 401, daemon="running"), "warning", "api_keys"),
        (EndpointFacts("http://h:1", 502, daemon="running"), "problem", "HTTP 502"),
        (EndpointFacts("http://h:1", timed_out=True, daemon="running"), "problem", "in time"),
        (EndpointFacts("http://h:1", error="Connection refused"), "problem", "Connection refused"),
        (
            EndpointFacts("http://h:1", error="Connection refused", daemon="running"),
            "problem",
            "though helixd runs",
        ),
    ],
)
def test_endpoint_verdicts(facts: EndpointFacts, status: str, says: str) -> None:
    check = judge_endpoint(facts)
    assert check.status == status and says in check.message
    assert (check.fix is None) == (status == "ok")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:11400"),
        ("0.0.0.0", "http://127.0.0.1:11400"),
        ("::", "http://[::1]:11400"),
        ("fe80::1", "http://[fe80::1]:11400"),
        ("localhost", "http://localhost:11400"),
    ],
)
def test_endpoint_url(host: str, url: str) -> None:
    assert endpoint_url(host, 11400) == url


# -- output -------------------------------------------------------------------------------


def test_render_aligns_indents_fixes_and_tallies() -> None:
    checks = [
        Check("nvidia", "info", "no NVIDIA GPU; helixd runs in RAM-only mode"),
        Check("config", "problem", "/c.toml is not valid:\nproviders.x.port: bad", "edit it"),
        Check("port 1", "warning", "taken", "stop it"),
    ]
    assert render(checks).splitlines() == [
        "info     nvidia  no NVIDIA GPU; helixd runs in RAM-only mode",
        "problem  config  /c.toml is not valid:",
        "                   providers.x.port: bad",
        "                 fix: edit it",
        "warning  port 1  taken",
        "                 fix: stop it",
        "1 problem, 1 warning",
    ]
    assert exit_code(checks) == 1


def test_no_problem_exits_zero_even_with_warnings() -> None:
    checks = [Check("a", "ok", "x"), Check("b", "warning", "y", "z"), Check("c", "info", "i")]
    assert exit_code(checks) == 0
    assert tally(checks) == "1 warning"
    assert tally([Check("a", "ok", "x")]) == "no problems found"


def test_json_shape() -> None:
    check = Check("port 1", "problem", "taken", "stop it")
    assert json.loads(json.dumps(check.as_json())) == {
        "check": "port 1",
        "status": "problem",
        "message": "taken",
        "fix": "stop it",
    }
