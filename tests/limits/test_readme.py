"""The README's limits grpcurl commands, sent as printed through a reflection-only client.

The README opens an account with `ACCOUNT=$(grpcurl ... | jq -r .account.account_id)` and
then uses `$ACCOUNT` in the bodies that follow; the test does the same with the real id. The real
grpcurl runs the same commands in tests/test_readme_grpcurl.py.
"""

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reflection_client import ReflectionClient

README = Path(__file__).resolve().parents[2] / "README.md"
LIMITS_ADDRESS = "127.0.0.1:50052"
SERVICE = "creditline.limits.v1.LimitsService"
# VARIABLE=$(grpcurl ... | jq -r .path.to.field), the path quoted where it indexes a list.
CAPTURE = re.compile(
    r"(?P<variable>\w+)=\$\((?P<command>grpcurl .+) \| jq -r '?(?P<path>\.[\w.\[\]]+)'?\)"
)
# A time-boxed watch: grpcurl's exit code 68 when its -max-time ends the stream is its end.
WATCH_END = " || [ $? -eq 68 ]"
# What each watch of the examples replays: two notices of customer-1; the reminder customer-2
# is sent (the test clock's 09:00 UTC is 17:00 in Shanghai, outside the quiet hours).
WATCHED = {"WatchNotices": 2, "WatchTreatmentSteps": 1}


@dataclass(frozen=True)
class Command:
    argv: list[str]
    sets: str | None = None  # the shell variable it sets, if any
    jq_path: str = ""  # and the field it is set from

    @property
    def method(self) -> str:
        return self.argv[-1]

    def body(self, variables: dict[str, str]) -> str:
        body = self.argv[self.argv.index("-d") + 1]
        return re.sub(r"\$(\w+)", lambda m: variables[m[1]], body)


def readme_commands() -> list[Command]:
    commands = []
    for line in README.read_text().splitlines():
        if LIMITS_ADDRESS not in line:
            continue
        if captured := CAPTURE.fullmatch(line):
            argv = shlex.split(captured["command"])
            commands.append(Command(argv, captured["variable"], captured["path"]))
        elif line.startswith("grpcurl "):
            commands.append(Command(shlex.split(line.removesuffix(WATCH_END))))
    return commands


def jq(document, path: str):
    # The path names proto fields, as grpcurl prints them; this client prints JSON names.
    for key, index in re.findall(r"\.(\w+)(?:\[(\d+)\])?", path):
        document = document[re.sub(r"_(\w)", lambda m: m[1].upper(), key)]
        if index:
            document = document[int(index)]
    return document


def minor_units(money: dict) -> int:
    return int(money.get("minorUnits", 0))


def run_readme(client: ReflectionClient) -> dict[str, list[dict]]:
    """Runs every command in order; returns the answers of each method, in order."""
    variables: dict[str, str] = {}
    answers: dict[str, list[dict]] = {}
    for command in readme_commands():
        assert command.argv[:2] == ["grpcurl", "-plaintext"], command.argv
        assert LIMITS_ADDRESS in command.argv, command.argv
        if command.method == "list":
            answers["list"] = [{"services": client.list_services()}]
        elif command.argv[-2] == "describe":
            methods = list(client.describe(command.method).methods_by_name)
            answers["describe"] = [{"methods": methods}]
        else:
            assert command.method.startswith(f"{SERVICE}/"), command.method
            name = command.method.rsplit("/", 1)[1]
            if name in WATCHED:
                items = client.stream(command.method, command.body(variables), WATCHED[name])
                response = {"items": items}
            else:
                response = client.call(command.method, command.body(variables))
            answers.setdefault(name, []).append(response)
            if command.sets:
                variables[command.sets] = jq(response, command.jq_path)
    return answers


def test_readme_has_the_documented_commands():
    commands = readme_commands()
    verbs = [c.method.rsplit("/", 1)[-1] for c in commands]
    assert verbs[:2] == ["list", SERVICE]
    assert verbs[2:] == [
        "OpenAccount", "Draw", "RequestIncrease", "ListLimitEvents", "GetAccount",
        "WatchNotices", "GetCustomerView", "AcknowledgeNotice", "GetCustomerView",
        "OpenAccount", "Draw", "ReportSignals", "RunCollections", "WatchTreatmentSteps",
    ]  # fmt: skip
    assert commands[2].sets == "ACCOUNT" and commands[2].jq_path == ".account.account_id"
    for command in commands[3:7]:
        assert '"account_id": "$ACCOUNT"' in command.body({"ACCOUNT": "$ACCOUNT"})
    assert commands[8].sets == "NOTICE"
    assert '"notice_id": "$NOTICE"' in commands[9].body({"NOTICE": "$NOTICE"})
    assert commands[11].sets == "ACCOUNT2"
    for command in commands[12:14]:
        assert '"account_id": "$ACCOUNT2"' in command.body({"ACCOUNT2": "$ACCOUNT2"})


@pytest.fixture
def reflection(limits) -> ReflectionClient:
    return ReflectionClient(limits.channel)


def test_readme_commands_work_as_printed(reflection):
    everything = run_readme(reflection)
    answers = {method: found[0] for method, found in everything.items()}
    assert {SERVICE, "grpc.health.v1.Health"} <= set(answers["list"]["services"])
    assert {"OpenAccount", "Draw", "RequestIncrease", "ListLimitEvents", "GetAccount"} <= set(
        answers["describe"]["methods"]
    )

    # The scoring example's applicant: band C, an 800-yuan line in tier `emerging`.
    opened = answers["OpenAccount"]
    account = opened["account"]
    assert account["status"] == "ACCOUNT_STATUS_ACTIVE"
    assert (account["tier"], account["riskBand"]) == ("emerging", "RISK_BAND_C")
    line = minor_units(account["creditLine"])
    assert line == 80_000 and minor_units(account["availableCredit"]) == line
    assert opened["event"]["type"] == "LIMIT_EVENT_TYPE_OPENED"

    # A 300-yuan draw leaves 500 available.
    drawn = answers["Draw"]["account"]
    assert drawn["accountId"] == account["accountId"]
    assert minor_units(drawn["drawn"]) == 30_000
    assert minor_units(drawn["availableCredit"]) == line - 30_000

    # The increase is declined with its reasons, what would change it and when to ask again:
    # no behaviour reported yet, and a caller cannot supply it.
    increase = answers["RequestIncrease"]
    assert not increase.get("approved", False)
    event = increase["event"]
    assert event["type"] == "LIMIT_EVENT_TYPE_INCREASE_DECLINED" and event["adverse"]
    assert [r["code"] for r in event["reasons"]] == ["POLICY_NO_RECENT_HISTORY"]
    assert event["reasons"][0]["texts"]["en"] == "Not enough recent repayment history"
    for reason in event["reasons"] + increase["improvements"]:
        assert reason["texts"]["en"] and reason["texts"]["zh-CN"]
    assert event["notice"]["texts"]["zh-CN"]
    assert increase["nextEligibleTime"] > event["createTime"]

    # The history, newest first: the declined increase, then the opening.
    events = answers["ListLimitEvents"]["events"]
    assert [e["type"] for e in events] == [
        "LIMIT_EVENT_TYPE_INCREASE_DECLINED",
        "LIMIT_EVENT_TYPE_OPENED",
    ]
    assert [e["eventId"] for e in events] == [event["eventId"], opened["event"]["eventId"]]

    read = answers["GetAccount"]["account"]
    assert minor_units(read["drawn"]) == 30_000
    assert minor_units(read["availableCredit"]) == line - 30_000
    assert not read["risk"].get("fresh", False) and "profileTime" not in read["risk"]

    # The notices of the opening and the declined increase, in that order; the newest,
    # acknowledged, shows its delivery in the customer's view.
    notices = [item["notice"] for item in answers["WatchNotices"]["items"]]
    assert [n["type"] for n in notices] == ["NOTICE_TYPE_OPENED", "NOTICE_TYPE_INCREASE_DECLINED"]
    acknowledged = answers["AcknowledgeNotice"]["notice"]
    assert acknowledged["noticeId"] == notices[1]["noticeId"]
    assert acknowledged["deliveryChannel"] == "NOTICE_CHANNEL_SMS"
    (seen,) = everything["GetCustomerView"][-1]["accounts"]
    assert seen["account"]["accountId"] == account["accountId"]
    assert seen["notices"][0]["deliveryTime"] == acknowledged["deliveryTime"]
    assert [d["eventId"] for d in seen["decisions"]] == [e["eventId"] for e in events]
    assert "treatmentSteps" not in seen  # customer-1 is current

    # customer-2, 1 day past due: the run decides a reminder by push; the watch replays it.
    account_2 = everything["OpenAccount"][1]["account"]
    assert account_2["timeZone"] == "Asia/Shanghai"
    run = answers["RunCollections"]
    assert (run["accountsExamined"], run["contacts"]) == (1, 1)
    (item,) = answers["WatchTreatmentSteps"]["items"]
    step = item["step"]
    assert step["accountId"] == account_2["accountId"]
    assert (step["kind"], step["action"], step["channel"]) == (
        "TREATMENT_STEP_KIND_CONTACT",
        "TREATMENT_ACTION_REMINDER",
        "CONTACT_CHANNEL_PUSH",
    )
    assert step["reason"]["texts"]["en"] == "A payment is 1 day overdue"


def test_pasting_the_readme_again_changes_nothing(reflection):
    first = run_readme(reflection)
    again = run_readme(reflection)
    for method in (
        "OpenAccount", "Draw", "RequestIncrease", "ListLimitEvents", "GetAccount",
        "AcknowledgeNotice", "GetCustomerView", "RunCollections", "WatchTreatmentSteps",
    ):  # fmt: skip
        assert again[method][-1] == first[method][-1], method
    assert again["OpenAccount"] == first["OpenAccount"]
    # The same notices, no new one; the acknowledged one now with its delivery.
    notice_ids = [
        [i["notice"]["noticeId"] for i in a["WatchNotices"][0]["items"]] for a in (first, again)
    ]
    assert notice_ids[0] == notice_ids[1]
