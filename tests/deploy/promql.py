"""A small reader of PromQL for the tests: the vector selectors an expression reads (metric name
and label matchers), the labels it groups or matches by, and the problems a reader can see
without Prometheus (unbalanced brackets, unknown functions, malformed matchers, ranges or
regular expressions). It is no full parser: promtool, where installed, is the one that is.

Grafana's variables are understood where a dashboard puts them: `$name` inside a quoted label
value, `$__rate_interval` and the like as a range.
"""

import re
from dataclasses import dataclass, field

# Split on whitespace: the lists as the PromQL documentation names them.
AGGREGATIONS = frozenset(
    re.split(r"\s+", "sum min max avg group stddev stdvar count count_values bottomk topk quantile")
)
FUNCTIONS = frozenset(
    re.split(
        r"\s+",
        """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
        clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
        days_in_month deg delta deriv exp floor histogram_avg histogram_count histogram_fraction
        histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters hour
        idelta increase irate label_join label_replace last_over_time ln log10 log2
        mad_over_time max_over_time min_over_time minute month pi predict_linear
        present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort
        sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp
        vector year""",
    )
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
OPERATOR_WORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2"})
NUMBER_WORDS = frozenset({"inf", "nan"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<variable>\$(?:\{\w+\}|\w+))
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=@])
  | (?P<punct>[(){}\[\],:])
    """,
    re.VERBOSE,
)
_RANGE = re.compile(
    r"(?:(?:\d+(?:ms|[smhdwy]))+|\$(?:\{__\w+\}|__\w+))(?::(?:(?:\d+(?:ms|[smhdwy]))+)?)?"
)
MATCH_OPERATORS = ("=", "!=", "=~", "!~")


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str  # unquoted


@dataclass
class Selector:
    metric: str | None
    matchers: list[Matcher] = field(default_factory=list)


@dataclass
class Reading:
    """What `read` found in one expression."""

    selectors: list[Selector] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _tokens(expr: str) -> tuple[list[tuple[str, str]], list[str]]:
    tokens, problems, position = [], [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            problems.append(f"cannot read {expr[position : position + 20]!r}")
            break
        position = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match[0]))
    return tokens, problems


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def read(expr: str) -> Reading:
    """The selectors, grouping labels and visible problems of `expr`."""
    reading = Reading()
    tokens, reading.problems = _tokens(expr)
    problems = reading.problems
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    i = 0

    def at(k: int) -> tuple[str, str]:
        return tokens[k] if k < len(tokens) else ("end", "")

    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "ident" and text in GROUPING:
            if at(i + 1)[1] == "(":
                i += 2
                while at(i)[1] != ")":
                    if at(i)[0] == "ident":
                        reading.grouping_labels.add(at(i)[1])
                    elif at(i)[1] != ",":
                        problems.append(f"{text}(...) holds {at(i)[1]!r}")
                        break
                    i += 1
                i += 1
                continue
            if text not in ("group_left", "group_right"):
                problems.append(f"{text} without a label list")
            i += 1
            continue
        if kind == "ident" and (text in OPERATOR_WORDS or text.lower() in NUMBER_WORDS):
            i += 1
            continue
        if kind == "ident" and (at(i + 1)[1] == "(" or text in AGGREGATIONS):
            if text not in FUNCTIONS | AGGREGATIONS:
                problems.append(f"unknown function {text}")
            i += 1
            continue
        if kind == "ident" or text == "{":
            selector = Selector(text if kind == "ident" else None)
            reading.selectors.append(selector)
            i += 1 if kind == "ident" else 0
            if at(i)[1] == "{":
                i += 1
                while at(i)[1] != "}":
                    label, op, value = at(i), at(i + 1), at(i + 2)
                    if label[0] != "ident" or op[1] not in MATCH_OPERATORS or value[0] != "string":
                        problems.append(f"malformed matcher in {text}{{...}}")
                        break
                    matcher = Matcher(label[1], op[1], _unquote(value[1]))
                    selector.matchers.append(matcher)
                    if "~" in matcher.op and "$" not in matcher.value:
                        try:
                            re.compile(matcher.value)
                        except re.error as error:
                            problems.append(f"bad regular expression {matcher.value!r}: {error}")
                    i += 3
                    if at(i)[1] == ",":
                        i += 1
                if at(i)[1] != "}":
                    problems.append(f"unclosed matchers after {text}")
                i += 1
            if selector.metric is None and not selector.matchers:
                problems.append("an empty selector {}")
            continue
        if text == "[":
            end = i + 1
            while end < len(tokens) and tokens[end][1] != "]":
                end += 1
            inside = "".join(t for _, t in tokens[i + 1 : end])
            if not _RANGE.fullmatch(inside):
                problems.append(f"bad range [{inside}]")
            i = end + 1
            continue
        if kind == "variable":
            problems.append(f"variable {text} outside a label value or a range")
        if text in depth:
            depth[text] += 1
        elif text in closing:
            depth[closing[text]] -= 1
            if depth[closing[text]] < 0:
                problems.append(f"unbalanced {text}")
                depth[closing[text]] = 0
        i += 1
    problems.extend(f"unclosed {opening}" for opening, count in depth.items() if count)
    if not reading.selectors and "time()" not in expr.replace(" ", ""):
        problems.append("reads no metric")
    return reading
