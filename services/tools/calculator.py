"""A safe arithmetic evaluator: the expression is parsed with `ast` and walked, never executed.

Everything an expression may cost is bounded before it is paid for: the text's length before
parsing, the tree's size and nesting before evaluating, and the size of every big integer before
the operation that would create it. So any string, however hostile, is answered or refused with a
`CalculationError` within milliseconds.
"""

from __future__ import annotations

import ast
import logging
import math
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

logger = logging.getLogger(__name__)

_Number = int | float

MAX_EXPRESSION_CHARS: Final = 1000
# Normalisation spells "^" as "**" and NFKC expands some characters (up to 18 for U+FDFA), so the
# parsed text may legitimately be somewhat longer than the input; this caps the pathological cases.
MAX_NORMALISED_CHARS: Final = 2 * MAX_EXPRESSION_CHARS
MAX_NODES: Final = 1000
# The evaluator recurses once per nesting level, so this keeps it far from Python's recursion
# limit. Chains of one precedence ("1 + 2 + ... + 40") are evaluated in a loop and stay shallow.
MAX_DEPTH: Final = 32
# 1000! has 8,530 bits. 10,000 bits is 3,011 decimal digits, safely below Python's 4,300-digit
# limit on str(int), and every operation on integers this size takes microseconds.
MAX_INTEGER_BITS: Final = 10_000
MAX_INTEGER_DIGITS: Final = math.ceil(MAX_INTEGER_BITS * math.log10(2))
MAX_FACTORIAL: Final = 1000
MAX_COMB_N: Final = 1_000_000
# math.comb's cost grows with min(k, n - k) even when the result is within MAX_INTEGER_BITS
# (comb(10000, 5000) takes milliseconds); this keeps every call well under a millisecond.
MAX_COMB_K: Final = 1000
# Beyond about 330 decimal places a double has no digits left to round, and a negative ndigits
# this large on an integer would only compute a pointless power of ten.
MAX_ROUND_NDIGITS: Final = 400
SIGNIFICANT_DIGITS: Final = 15
# Floats whose decimal exponent falls in this range are written positionally; outside it the
# positional form would be mostly zeros (or zeros standing in for digits a double does not have).
MIN_POSITIONAL_EXPONENT: Final = -6
MAX_POSITIONAL_EXPONENT: Final = SIGNIFICANT_DIGITS - 1
MAX_DESCRIBED_DIGITS: Final = 30
MAX_QUOTED_CHARS: Final = 40


class CalculationError(ValueError):
    """The expression cannot be calculated; the message says why, in a sentence fit for a user."""


@dataclass(frozen=True, slots=True)
class Calculation:
    """The value of an expression.

    `result` is exact for integers and has up to 15 significant digits otherwise; `value` is the
    nearest float (infinite for integers beyond float range); `is_integer` says whether the value
    is an exact integer rather than a float that happens to be whole (7 / 7).
    """

    result: str
    value: float
    is_integer: bool


def calculate(expression: str) -> Calculation:
    """Evaluate an arithmetic expression, or raise `CalculationError` saying why it cannot be."""
    try:
        return _calculate(expression)
    except CalculationError:
        raise
    except (RecursionError, MemoryError):
        raise CalculationError(_TOO_COMPLEX) from None
    except ZeroDivisionError:
        raise CalculationError(_DIVISION_BY_ZERO) from None
    except OverflowError:
        raise CalculationError(_FLOAT_TOO_LARGE) from None
    except Exception as exc:
        # Callers rely on CalculationError being the only failure for any input; a bug here must
        # reach the user as a refusal, not as a crashed request, and the log keeps the evidence.
        logger.exception("calculator failed on %.100r", expression)
        raise CalculationError(INTERNAL_ERROR) from exc


INTERNAL_ERROR: Final = "The expression could not be calculated because of an internal error."
_TOO_COMPLEX: Final = "The expression is too complex to calculate."
_DIVISION_BY_ZERO: Final = "Division by zero is undefined."
_FLOAT_TOO_LARGE: Final = "The result is too large: numbers are limited to about 1.8e308."
_INT_TOO_LARGE: Final = (
    f"The result is too large: whole numbers are limited to {MAX_INTEGER_DIGITS:,} digits."
)
_TOO_SMALL: Final = "The result is too close to zero to represent."
_NOT_REAL: Final = "The result is not a real number."
_UNDEFINED: Final = "The result is undefined (not a number)."


def _calculate(expression: str) -> Calculation:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculationError(_too_long(len(expression)))
    text = _normalise(expression)
    if not text:
        raise CalculationError("The expression is empty.")
    if len(text) > MAX_NORMALISED_CHARS:
        raise CalculationError(
            "The expression is too long: spelled out in plain symbols (for example ^ as **) it "
            f"has {len(text):,} characters, and the limit is {MAX_NORMALISED_CHARS:,}."
        )
    _check_bracket_depth(text)
    tree = _parse(text)
    _validate(tree.body)
    return _to_calculation(_evaluate(tree.body))


def _too_long(length: int) -> str:
    return (
        f"The expression is too long: {length:,} characters, "
        f"and the limit is {MAX_EXPRESSION_CHARS:,}."
    )


# --- Normalisation -------------------------------------------------------------------------------

# NFKC would flatten "2³" into "23", a silently wrong number, so superscripts become powers first.
_SUPERSCRIPTS: Final = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻", "0123456789+-")
_SYMBOLS: Final = str.maketrans(
    {
        "×": "*",
        "✕": "*",
        "✖": "*",
        "⋅": "*",
        "∗": "*",
        "÷": "/",
        "∕": "/",
        "⁄": "/",
        "➗": "/",
        "−": "-",
        "‐": "-",
        "‑": "-",
        "‒": "-",
        "–": "-",
        "—": "-",
        "―": "-",
        "➖": "-",
        "π": "pi",
        "^": "**",
    }
)


def _normalise(expression: str) -> str:
    """The expression as Python syntax: "２×３＾２ =" -> "2*3**2", "10⁻³" -> "10**(-3)"."""
    pieces: list[str] = []
    superscript: list[str] = []
    for char in expression:
        if char in "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻":
            superscript.append(char)
            continue
        if superscript:
            pieces.append(_superscript_power(superscript))
            superscript = []
        if unicodedata.decomposition(char).startswith("<fraction>"):
            # "½" would otherwise become "1⁄2" and then "1½" the number 11/2.
            pieces.append("(" + unicodedata.normalize("NFKC", char).replace("⁄", "/") + ")")
        else:
            pieces.append(char)
    if superscript:
        pieces.append(_superscript_power(superscript))
    text = unicodedata.normalize("NFKC", "".join(pieces)).translate(_SYMBOLS)
    # A newline outside brackets would end the expression early; users mean plain spacing.
    text = "".join(" " if char.isspace() else char for char in text).strip()
    return _strip_trailing_equals(text)


def _superscript_power(chars: list[str]) -> str:
    return "**(" + "".join(chars).translate(_SUPERSCRIPTS) + ")"


def _strip_trailing_equals(text: str) -> str:
    # Done by hand rather than with a regex: r"\s*=\s*\??$" backtracks quadratically on spaces.
    if text.endswith("?"):
        before = text[:-1].rstrip()
        if before.endswith("="):
            return before[:-1].strip()
        return text
    if text.endswith("="):
        return text[:-1].strip()
    return text


# --- Parsing and validation ----------------------------------------------------------------------


def _check_bracket_depth(text: str) -> None:
    # Python's tokenizer gives up at 200 nested brackets with a cryptic message; refuse earlier
    # and plainly, before the parser spends anything on it.
    depth = 0
    for char in text:
        if char in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                raise CalculationError(_too_deep())
        elif char in ")]}" and depth > 0:
            depth -= 1


def _too_deep() -> str:
    return f"The expression is nested too deeply: at most {MAX_DEPTH} levels are allowed."


def _parse(text: str) -> ast.Expression:
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in text):
        # Null bytes and lone surrogates cannot even be tokenized.
        raise CalculationError(
            "This is not a valid expression: it contains characters that cannot be used."
        )
    if "#" in text:
        # Python would treat the rest as a comment and silently answer for only the first part.
        raise CalculationError("This is not a valid expression: '#' is not an operator.")
    try:
        # Input like "1if 1 else 2" makes the parser warn on stderr; the expression is refused
        # anyway, so the warning is noise in the service's logs. (Were two threads to race here,
        # the worst outcome is SyntaxWarnings staying ignored, which is harmless in a service.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculationError(_syntax_message(text, exc)) from None
    except ValueError:
        # Only reachable if a future Python rejects some other character this way.
        raise CalculationError(
            "This is not a valid expression: it contains characters that cannot be used."
        ) from None


def _syntax_message(text: str, exc: SyntaxError) -> str:
    reason = exc.msg or "invalid syntax"
    if exc.lineno != 1 or exc.offset is None or exc.offset > len(text):
        where = "at the end"
    else:
        where = f"near {text[exc.offset - 1 :][:10]!r}"
    # Python's own messages sometimes end in a question ("Perhaps you forgot a comma?").
    end = "" if reason.endswith((".", "?")) else "."
    return f"This is not a valid expression ({where}): {reason}{end}"


_BINARY_OPERATORS: Final[tuple[type[ast.operator], ...]] = (
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
)
_UNSUPPORTED_OPERATORS: Final[dict[type[ast.AST], str]] = {
    ast.LShift: "Bit shifts (<< and >>) are not supported.",
    ast.RShift: "Bit shifts (<< and >>) are not supported.",
    ast.BitAnd: "Bitwise operators (&, |, ~) are not supported.",
    ast.BitOr: "Bitwise operators (&, |, ~) are not supported.",
    ast.BitXor: "Bitwise operators (&, |, ~) are not supported.",
    ast.Invert: "Bitwise operators (&, |, ~) are not supported.",
    ast.MatMult: "The @ operator is not supported.",
    ast.Not: "Logical operators (and, or, not) are not supported.",
}
_CONTAINER_MESSAGE: Final = (
    "Lists, tuples, sets and dictionaries are not supported. Commas only separate function "
    "arguments: write 1.5, not 1,5, and 1000, not 1,000."
)
_COMPREHENSION_MESSAGE: Final = "Comprehensions are not supported."
_STRING_MESSAGE: Final = "Text strings are not supported: an expression is made of numbers."
_UNSUPPORTED_NODES: Final[dict[type[ast.AST], str]] = {
    ast.Attribute: (
        "Attribute access with '.' is not supported: call functions by name, for example sqrt(2)."
    ),
    ast.Subscript: "Indexing with [ ] is not supported.",
    ast.Lambda: "Lambda functions are not supported.",
    ast.Compare: "Comparisons (such as <, > and ==) are not supported.",
    ast.BoolOp: "Logical operators (and, or, not) are not supported.",
    ast.IfExp: "Conditional expressions (if ... else) are not supported.",
    ast.NamedExpr: "Assignment (:=) is not supported.",
    ast.Starred: "Unpacking with * is not supported.",
    ast.JoinedStr: _STRING_MESSAGE,
    ast.List: _CONTAINER_MESSAGE,
    ast.Tuple: _CONTAINER_MESSAGE,
    ast.Set: _CONTAINER_MESSAGE,
    ast.Dict: _CONTAINER_MESSAGE,
    ast.ListComp: _COMPREHENSION_MESSAGE,
    ast.SetComp: _COMPREHENSION_MESSAGE,
    ast.DictComp: _COMPREHENSION_MESSAGE,
    ast.GeneratorExp: _COMPREHENSION_MESSAGE,
}


def _validate(root: ast.expr) -> None:
    """Refuse anything but numbers, arithmetic, constants and whitelisted calls, and bound size.

    Iterative, so a tree too deep to evaluate is refused instead of overflowing the stack here.
    """
    pending: list[tuple[ast.expr, int]] = [(root, 1)]
    nodes = 0
    while pending:
        node, depth = pending.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise CalculationError(
                f"The expression is too complex: at most {MAX_NODES:,} numbers, operators "
                "and calls are allowed."
            )
        if depth > MAX_DEPTH:
            raise CalculationError(_too_deep())
        if isinstance(node, ast.BinOp):
            _validate_operator(node.op)
            # The left operand continues the same chain, which the evaluator walks in a loop.
            pending.append((node.left, depth))
            pending.append((node.right, depth + 1))
        elif isinstance(node, ast.UnaryOp):
            _validate_operator(node.op)
            pending.append((node.operand, depth + 1))
        elif isinstance(node, ast.Constant):
            _validate_constant(node.value)
        elif isinstance(node, ast.Name):
            _validate_name(node.id)
        elif isinstance(node, ast.Call):
            _validate_call(node)
            pending.extend((argument, depth + 1) for argument in node.args)
        else:
            message = _UNSUPPORTED_NODES.get(type(node))
            raise CalculationError(
                message or f"This kind of expression ({type(node).__name__}) is not supported."
            )


def _validate_operator(op: ast.operator | ast.unaryop) -> None:
    if isinstance(op, (*_BINARY_OPERATORS, ast.UAdd, ast.USub)):
        return
    message = _UNSUPPORTED_OPERATORS.get(type(op))
    raise CalculationError(message or f"The operator {type(op).__name__} is not supported.")


def _validate_constant(value: object) -> None:
    if isinstance(value, bool):
        raise CalculationError("True and False are not numbers here; use 1 and 0.")
    if isinstance(value, int):
        if value.bit_length() > MAX_INTEGER_BITS:
            raise CalculationError(_INT_TOO_LARGE)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculationError("A number in the expression is too large: the limit is 1.8e308.")
        return
    if isinstance(value, complex):
        raise CalculationError("Complex numbers (such as 1j) are not supported.")
    if isinstance(value, (str, bytes)):
        raise CalculationError(_STRING_MESSAGE)
    raise CalculationError(f"{value!r} is not a number.")


def _validate_name(name: str) -> None:
    if name in _CONSTANTS:
        return
    if name in _FUNCTIONS:
        raise CalculationError(f"{name} is a function: call it with arguments, e.g. {name}(2).")
    raise CalculationError(_unknown_name(name, "name"))


def _validate_call(node: ast.Call) -> None:
    function = node.func
    if not isinstance(function, ast.Name):
        if isinstance(function, ast.Constant):
            _validate_constant(function.value)
            raise CalculationError(
                "Write * for multiplication: for example 2*(3 + 4), not 2(3 + 4)."
            )
        message = _UNSUPPORTED_NODES.get(type(function))
        if message is not None:
            raise CalculationError(message)
        raise CalculationError(
            "Only the supported functions can be called, by name (e.g. sqrt(2)); "
            "write * for multiplication."
        )
    name = function.id
    if name in _CONSTANTS:
        raise CalculationError(f"{name} is a constant, not a function; write * to multiply.")
    spec = _FUNCTIONS.get(name)
    if spec is None:
        raise CalculationError(_unknown_name(name, "function"))
    if node.keywords:
        raise CalculationError(
            f"Keyword arguments are not supported: pass {name}()'s arguments by position."
        )
    count = len(node.args)
    if count < spec.min_args or (spec.max_args is not None and count > spec.max_args):
        given = f"{count} was given" if count == 1 else f"{count} were given"
        raise CalculationError(f"{name}() takes {spec.arity}, but {given}.")


def _unknown_name(name: str, kind: str) -> str:
    quoted = name if len(name) <= MAX_QUOTED_CHARS else name[:MAX_QUOTED_CHARS] + "…"
    known = _CONSTANTS if kind == "name" else _FUNCTIONS
    lowered = name.lower()
    for candidate in known:
        if candidate == lowered:
            return f"Unknown {kind} '{quoted}'; did you mean '{candidate}'?"
    if kind == "name":
        return (
            f"Unknown name '{quoted}': only numbers, the constants pi, e and tau, and the "
            "supported functions can be used."
        )
    return f"Unknown function '{quoted}'. The supported functions are: {', '.join(_FUNCTIONS)}."


# --- Evaluation ----------------------------------------------------------------------------------


def _evaluate(node: ast.expr) -> _Number:
    """The value of a validated tree: every node here was accepted by `_validate`."""
    if isinstance(node, ast.BinOp):
        chain: list[tuple[ast.operator, ast.expr]] = []
        while isinstance(node, ast.BinOp):
            chain.append((node.op, node.right))
            node = node.left
        value = _evaluate(node)
        for op, right in reversed(chain):
            value = _binary(op, value, _evaluate(right))
        return value
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.Constant):
        constant = node.value
        if isinstance(constant, (int, float)) and not isinstance(constant, bool):
            return constant
    elif isinstance(node, ast.Name):
        return _CONSTANTS[node.id]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        return _call(name, _FUNCTIONS[name], [_evaluate(argument) for argument in node.args])
    raise AssertionError(f"unvalidated node {type(node).__name__}")


def _binary(op: ast.operator, left: _Number, right: _Number) -> _Number:
    result: object
    if isinstance(op, ast.Add):
        result = left + right
    elif isinstance(op, ast.Sub):
        result = left - right
    elif isinstance(op, ast.Mult):
        # A product has at most as many bits as its factors together.
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INTEGER_BITS + 1
        ):
            raise CalculationError(_INT_TOO_LARGE)
        result = left * right
    elif isinstance(op, ast.Pow):
        result = _power(left, right)
    else:
        if right == 0:
            raise CalculationError(_DIVISION_BY_ZERO)
        if isinstance(op, ast.Div):
            result = left / right
        elif isinstance(op, ast.FloorDiv):
            result = left // right
        else:
            result = left % right
    return _checked(result)


def _power(base: _Number, exponent: _Number) -> object:
    if base == 0 and exponent < 0:
        raise CalculationError("Zero cannot be raised to a negative power: that divides by zero.")
    if not (isinstance(base, int) and isinstance(exponent, int)):
        # Python answers a negative base with a fractional exponent with a complex number, which
        # _checked refuses.
        return base**exponent
    if base in (0, 1) or exponent == 0:
        return base**exponent if exponent >= 0 else float(base)
    if base == -1:
        sign = 1 if exponent % 2 == 0 else -1
        return sign if exponent >= 0 else float(sign)
    # |base| >= 2, so the result has at least |exponent| bits (or, for a negative exponent, is
    # below 2 ** exponent); checking this first keeps the float estimate below from overflowing.
    if abs(exponent) > MAX_INTEGER_BITS or abs(exponent) * math.log2(abs(base)) > MAX_INTEGER_BITS:
        raise CalculationError(_INT_TOO_LARGE if exponent > 0 else _TOO_SMALL)
    if exponent > 0:
        return base**exponent
    # True division of ints is correctly rounded even when the divisor is beyond float range,
    # where Python's own int ** -int would overflow converting the base to float.
    return 1 / base**-exponent


def _checked(result: object) -> _Number:
    if isinstance(result, int):
        if result.bit_length() > MAX_INTEGER_BITS:
            raise CalculationError(_INT_TOO_LARGE)
        return result
    if isinstance(result, float):
        if math.isnan(result):
            raise CalculationError(_UNDEFINED)
        if math.isinf(result):
            raise CalculationError(_FLOAT_TOO_LARGE)
        return result
    if isinstance(result, complex):
        raise CalculationError(_NOT_REAL)
    raise AssertionError(f"unexpected result type {type(result).__name__}")


# --- Functions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Function:
    min_args: int
    max_args: int | None
    apply: Callable[[Sequence[_Number]], _Number]

    @property
    def arity(self) -> str:
        if self.max_args is None:
            return f"at least {self.min_args} argument{'s' if self.min_args > 1 else ''}"
        if self.min_args == self.max_args:
            return f"{self.min_args} argument{'s' if self.min_args > 1 else ''}"
        return f"{self.min_args} or {self.max_args} arguments"


def _call(name: str, function: _Function, arguments: list[_Number]) -> _Number:
    try:
        return _checked(function.apply(arguments))
    except CalculationError:
        raise
    except (ValueError, ZeroDivisionError):
        # math reports a domain error ("math domain error") for sqrt(-1), log(0), asin(2), ...
        raise CalculationError(_domain_message(name, arguments)) from None
    except OverflowError:
        raise CalculationError(_FLOAT_TOO_LARGE) from None


def _domain_message(name: str, arguments: Sequence[_Number]) -> str:
    described = ", ".join(_describe(argument) for argument in arguments)
    if len(arguments) == 1:
        return f"{name}({described}) is not defined: {described} is outside the domain of {name}."
    return f"{name}({described}) is not defined for these arguments."


def _describe(value: _Number) -> str:
    if isinstance(value, float):
        return _format_float(value)
    digits = len(str(abs(value)))
    return str(value) if digits <= MAX_DESCRIBED_DIGITS else f"a {digits}-digit number"


def _whole(name: str, value: _Number) -> int:
    if isinstance(value, int):
        return value
    if value.is_integer():
        return int(value)
    raise CalculationError(f"{name}() needs whole numbers, but got {_describe(value)}.")


def _natural(name: str, value: _Number) -> int:
    whole = _whole(name, value)
    if whole < 0:
        raise CalculationError(f"{name}() is not defined for negative numbers.")
    return whole


def _float_function(function: Callable[[float], float]) -> _Function:
    return _Function(1, 1, lambda arguments: function(arguments[0]))


def _sqrt(arguments: Sequence[_Number]) -> _Number:
    (x,) = arguments
    if isinstance(x, int) and x >= 0:
        # Exact for perfect squares, including ones far beyond float range.
        root = math.isqrt(x)
        if root * root == x:
            return root
    return math.sqrt(x)


def _log(arguments: Sequence[_Number]) -> _Number:
    if len(arguments) == 1:
        return math.log(arguments[0])
    return math.log(arguments[0], arguments[1])


def _round(arguments: Sequence[_Number]) -> _Number:
    if len(arguments) == 1:
        return round(arguments[0])
    ndigits = _whole("round", arguments[1])
    if abs(ndigits) > MAX_ROUND_NDIGITS:
        raise CalculationError(
            f"round() takes at most {MAX_ROUND_NDIGITS} digits, but got {_describe(ndigits)}."
        )
    return round(arguments[0], ndigits)


def _factorial(arguments: Sequence[_Number]) -> _Number:
    n = _natural("factorial", arguments[0])
    if n > MAX_FACTORIAL:
        raise CalculationError(
            f"factorial() is limited to numbers up to {MAX_FACTORIAL:,}, but got {_describe(n)}."
        )
    return math.factorial(n)


def _comb(arguments: Sequence[_Number]) -> _Number:
    n, k = (_natural("comb", argument) for argument in arguments)
    _check_comb_n("comb", n)
    if k > n:
        return 0
    if min(k, n - k) > MAX_COMB_K:
        raise CalculationError(
            f"comb(n, k) is limited to k or n - k up to {MAX_COMB_K:,}, but got {n:,} and {k:,}."
        )
    _check_estimated_bits(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1))
    return math.comb(n, k)


def _perm(arguments: Sequence[_Number]) -> _Number:
    n = _natural("perm", arguments[0])
    _check_comb_n("perm", n)
    k = _natural("perm", arguments[1]) if len(arguments) == 2 else n
    if k > n:
        return 0
    if k > MAX_COMB_K:
        raise CalculationError(f"perm(n, k) is limited to k up to {MAX_COMB_K:,}, but got {k:,}.")
    _check_estimated_bits(math.lgamma(n + 1) - math.lgamma(n - k + 1))
    return math.perm(n, k)


def _check_comb_n(name: str, n: int) -> None:
    if n > MAX_COMB_N:
        raise CalculationError(
            f"{name}() is limited to n up to {MAX_COMB_N:,}, but got {_describe(n)}."
        )


def _check_estimated_bits(natural_log: float) -> None:
    # lgamma's rounding is far smaller than this slack; _checked catches anything it lets by.
    if natural_log / math.log(2) > MAX_INTEGER_BITS + 1:
        raise CalculationError(_INT_TOO_LARGE)


def _gcd(arguments: Sequence[_Number]) -> _Number:
    return math.gcd(*(_whole("gcd", argument) for argument in arguments))


def _lcm(arguments: Sequence[_Number]) -> _Number:
    result = 1
    for argument in arguments:
        # One pair at a time, so that a growing multiple is refused as soon as it is too large.
        result = math.lcm(result, _whole("lcm", argument))
        if result.bit_length() > MAX_INTEGER_BITS:
            raise CalculationError(_INT_TOO_LARGE)
    return result


def _hypot(arguments: Sequence[_Number]) -> _Number:
    return math.hypot(*arguments)


_CONSTANTS: Final[dict[str, float]] = {"pi": math.pi, "e": math.e, "tau": math.tau}

# Exactly the functions CalculateRequest's documentation promises; keep the two in step.
_FUNCTIONS: Final[dict[str, _Function]] = {
    "sqrt": _Function(1, 1, _sqrt),
    "cbrt": _float_function(math.cbrt),
    "exp": _float_function(math.exp),
    "log": _Function(1, 2, _log),
    "log2": _float_function(math.log2),
    "log10": _float_function(math.log10),
    "sin": _float_function(math.sin),
    "cos": _float_function(math.cos),
    "tan": _float_function(math.tan),
    "asin": _float_function(math.asin),
    "acos": _float_function(math.acos),
    "atan": _float_function(math.atan),
    "atan2": _Function(2, 2, lambda arguments: math.atan2(arguments[0], arguments[1])),
    "sinh": _float_function(math.sinh),
    "cosh": _float_function(math.cosh),
    "tanh": _float_function(math.tanh),
    "degrees": _float_function(math.degrees),
    "radians": _float_function(math.radians),
    "abs": _Function(1, 1, lambda arguments: abs(arguments[0])),
    "round": _Function(1, 2, _round),
    "floor": _Function(1, 1, lambda arguments: math.floor(arguments[0])),
    "ceil": _Function(1, 1, lambda arguments: math.ceil(arguments[0])),
    "trunc": _Function(1, 1, lambda arguments: math.trunc(arguments[0])),
    "factorial": _Function(1, 1, _factorial),
    "comb": _Function(2, 2, _comb),
    "perm": _Function(1, 2, _perm),
    "gcd": _Function(1, None, _gcd),
    "lcm": _Function(1, None, _lcm),
    "hypot": _Function(1, None, _hypot),
    "min": _Function(1, None, min),
    "max": _Function(1, None, max),
}


# --- Results -------------------------------------------------------------------------------------


def _to_calculation(value: _Number) -> Calculation:
    if isinstance(value, int):
        try:
            approximate = float(value)
        except OverflowError:
            approximate = math.inf if value > 0 else -math.inf
        return Calculation(result=str(value), value=approximate, is_integer=True)
    if value == 0:
        # "-0" would puzzle a user; the sign of zero carries nothing in arithmetic answers.
        return Calculation(result="0", value=0.0, is_integer=False)
    return Calculation(result=_format_float(value), value=value, is_integer=False)


def _format_float(value: float) -> str:
    """Up to 15 significant digits, so 0.1 + 0.2 reads "0.3"; positional unless very large/small."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits, exponent = _significant_digits(abs(value))
    if exponent > MAX_POSITIONAL_EXPONENT or exponent < MIN_POSITIONAL_EXPONENT:
        fraction = "." + digits[1:] if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{fraction}e{exponent}"
    if exponent >= 0:
        whole = digits[: exponent + 1].ljust(exponent + 1, "0")
        fraction = digits[exponent + 1 :]
    else:
        whole = "0"
        fraction = "0" * (-exponent - 1) + digits
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


def _significant_digits(magnitude: float) -> tuple[str, int]:
    """The rounded significant digits (without trailing zeros) and the decimal exponent."""
    mantissa, _, exponent_text = format(magnitude, f".{SIGNIFICANT_DIGITS - 1}e").partition("e")
    if math.isinf(float(f"{mantissa}e{exponent_text}")):
        # Rounding the largest doubles up to 15 digits steps outside float range, and the text
        # would read back as infinity; cutting the digits off keeps it a finite number.
        mantissa, _, exponent_text = format(magnitude, ".16e").partition("e")
        mantissa = mantissa[: SIGNIFICANT_DIGITS + 1]
    return mantissa.replace(".", "").rstrip("0") or "0", int(exponent_text)
