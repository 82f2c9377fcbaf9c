"""`python -m tools.keys`: create, list, disable, enable and delete API keys, and read their usage.

It works on the store `CHAT_STORE_URL` names, as the service does: the local SQLite
file (`make run`'s default), or a deployed stack's DynamoDB table with the operator's
own AWS credentials (`CHAT_STORE_URL=dynamodb://<TableName output>`). The store keeps
only a key's SHA-256: `create` prints the key once, alone on the last line of its
output, and nothing can show it again.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "functions" / "chat"))

from chat.budgets import DEPLOYMENT, iso, windows
from chat.caller import TOKEN_IDENTITY
from chat.config import Settings
from chat.keys import NAME_RULE, RESERVED_NAMES, key_hash, new_key, valid_name
from chat.ledger import KeyExists, KeyRecord, Ledger, LedgerError, open_ledger
from chat.usage import prompt_bound


class Refused(Exception):
    """The command cannot do what was asked; the message says why (exit status 1)."""


def _name(value: str) -> str:
    if not valid_name(value):
        raise argparse.ArgumentTypeError(f"a key name is {NAME_RULE}")
    return value


def _tokens(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("a budget is a whole number of tokens, at least 1")
    return int(value)


def _budget(value: int | None, default: int | None) -> str:
    if value is not None:
        return str(value)
    return "none" if default is None else f"{default} (default)"


def _too_small(settings: Settings, per_day: int | None, per_month: int | None) -> list[str]:
    """A warning when a budget given cannot hold even the smallest request's reservation."""
    completion = settings.openai_max_tokens or settings.reserve_completion_tokens
    smallest = prompt_bound([{"role": "user", "content": "x"}]) + completion
    given = ((per_day, "day"), (per_month, "month"))
    small = [f"{budget} tokens per {window}" for budget, window in given if budget is not None and budget < smallest]
    if not small:
        return []
    return [
        f"Warning: no request can fit a budget of {' or '.join(small)}: each reserves at least {smallest} tokens,"
        f" {completion} of them for the answer (OPENAI_MAX_TOKENS, else CHAT_RESERVE_COMPLETION_TOKENS, as set"
        " here: check the service's own settings)."
    ]


def create(ledger: Ledger, settings: Settings, name: str, per_day: int | None, per_month: int | None) -> list[str]:
    if name in RESERVED_NAMES:
        raise Refused(f"{name!r} is reserved: 'default' is the stack's generated token, 'local' the local identity.")
    key = new_key()
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        ledger.create_key(KeyRecord(name, key_hash(key), created, False, per_day, per_month))
    except KeyExists as error:
        raise Refused(str(error)) from None
    return [
        f"Created key {name!r} (tokens per day: {per_day or 'default'}, per month: {per_month or 'default'}).",
        *_too_small(settings, per_day, per_month),
        "This is the only time the key is shown; the store keeps its hash alone:",
        key,
    ]


def listing(ledger: Ledger, settings: Settings) -> list[str]:
    rows = [("NAME", "STATE", "TOKENS/DAY", "TOKENS/MONTH", "CREATED")]
    for record in ledger.all_keys():
        rows.append(
            (
                record.name,
                "disabled" if record.disabled else "enabled",
                _budget(record.tokens_per_day, settings.budget_tokens_per_day),
                _budget(record.tokens_per_month, settings.budget_tokens_per_month),
                record.created_at,
            )
        )
    return _table(rows) if len(rows) > 1 else ["No keys."]


def usage(ledger: Ledger, settings: Settings, name: str | None) -> list[str]:
    """Every key's usage (or one's), the stack's token as the key `default` once it has used any this month,
    and the deployment's day when a cap is configured here or by the service (its counter is written only then)."""
    day, month = windows(datetime.datetime.now(datetime.UTC))
    limits = {record.name: (record.tokens_per_day, record.tokens_per_month) for record in ledger.all_keys()}
    if name == TOKEN_IDENTITY or (name is None and ledger.used(TOKEN_IDENTITY, [month.key])[month.key]):
        limits[TOKEN_IDENTITY] = (None, None)  # the default budgets
    if name is not None and name not in limits:
        raise Refused(f"No key named {name!r}.")
    rows = [("NAME", f"DAY {day.key[4:]} USED/LIMIT", f"MONTH {month.key[6:]} USED/LIMIT")]
    for caller in [name] if name is not None else sorted(limits):
        used = ledger.used(caller, [day.key, month.key])
        per_day = limits[caller][0] or settings.budget_tokens_per_day
        per_month = limits[caller][1] or settings.budget_tokens_per_month
        rows.append((caller, f"{used[day.key]}/{per_day or '-'}", f"{used[month.key]}/{per_month or '-'}"))
    total = ledger.used(DEPLOYMENT, [day.key])[day.key] if name is None else 0
    if total or (name is None and settings.deployment_tokens_per_day is not None):
        rows.append(("(deployment)", f"{total}/{settings.deployment_tokens_per_day or '-'}", ""))
    resets = f"Windows are UTC; the day resets at {iso(day.resets_at)}, the month at {iso(month.resets_at)}."
    return [*_table(rows), resets]


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.keys", description=__doc__.split("\n")[0].split(": ", 1)[1] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("create", help="create a key and print it (once)")
    made.add_argument("name", type=_name)
    made.add_argument(
        "--tokens-per-day", type=_tokens, help="daily budget (UTC day); default CHAT_BUDGET_TOKENS_PER_DAY"
    )
    made.add_argument(
        "--tokens-per-month", type=_tokens, help="monthly budget (UTC month); default CHAT_BUDGET_TOKENS_PER_MONTH"
    )
    commands.add_parser("list", help="every key, its state and budgets")
    verbs = (("disable", "stop a key working"), ("enable", "let a key work again"), ("delete", "remove a key"))
    for verb, text in verbs:
        commands.add_parser(verb, help=text).add_argument("name", type=_name)
    used = commands.add_parser("usage", help="tokens used today and this month, per key")
    used.add_argument("name", nargs="?", type=_name)
    return parser


def run(argv: Sequence[str] | None = None, settings: Settings | None = None) -> tuple[int, list[str]]:
    """The exit status and output lines of one command."""
    args = parser().parse_args(argv)
    settings = settings or Settings.from_env()
    ledger = open_ledger(settings.store_url)
    if ledger is None:
        return 1, ["CHAT_STORE_URL is none: keys and usage need a store (sqlite:///<path> or dynamodb://<table>)."]
    try:
        if args.command == "create":
            return 0, create(ledger, settings, args.name, args.tokens_per_day, args.tokens_per_month)
        if args.command == "list":
            return 0, listing(ledger, settings)
        if args.command == "usage":
            return 0, usage(ledger, settings, args.name)
        if args.name == TOKEN_IDENTITY:
            raise Refused(
                f"'{TOKEN_IDENTITY}' is the stack's generated token, checked against its secret: rotate the secret"
                " (to a value nobody has, to retire it) instead."
            )
        if args.command == "delete":
            found = ledger.delete_key(args.name)
        else:
            found = ledger.set_disabled(args.name, args.command == "disable")
        if not found:
            raise Refused(f"No key named {args.name!r}.")
        return 0, [f"Key {args.name!r} {args.command}d; running instances notice within CHAT_KEY_CACHE_SECONDS."]
    except Refused as refusal:
        return 1, [str(refusal)]
    except LedgerError as error:
        return 1, [str(error)]
    except Exception as error:  # boto3's own errors (no credentials, no such table) say what to fix
        return 1, [f"The store failed: {type(error).__name__}: {error}"]
    finally:
        ledger.close()


def main() -> None:
    status, lines = run()
    print(*lines, sep="\n", file=sys.stdout if status == 0 else sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
