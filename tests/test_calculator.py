"""The calculator answers what it can exactly, and refuses everything else quickly and politely."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tools import calculator
from services.tools.calculator import Calculation, CalculationError, calculate

# Generous on purpose: every expression here takes well under 50 ms, and a slow CI machine must
# not make these tests flaky. Anything unbounded (9**9**9 computed for real) takes minutes.
FAST_SECONDS = 0.25


def timed_calculate(expression: str) -> Calculation:
    start = time.perf_counter()
    try:
        return calculate(expression)
    finally:
        elapsed = time.perf_counter() - start
        assert elapsed < FAST_SECONDS, f"{expression[:60]!r} took {elapsed:.3f} s"


GOOD = [
    # Operators, precedence and associativity.
    ("1 + 2", "3"),
    ("7 - 10", "-3"),
    ("6 * 7", "42"),
    ("7 / 2", "3.5"),
    ("7 // 2", "3"),
    ("-7 // 2", "-4"),
    ("7 % 3", "1"),
    ("-7 % 3", "2"),
    ("2 ** 10", "1024"),
    ("1 + 2 * 3", "7"),
    ("(1 + 2) * 3", "9"),
    ("10 - 2 - 3", "5"),
    ("100 / 10 / 5", "2"),
    ("2 ** 3 ** 2", "512"),
    ("-2 ** 2", "-4"),
    ("(-2) ** 2", "4"),
    ("+5", "5"),
    ("- -5", "5"),
    ("2 ** -1", "0.5"),
    ("(-2) ** -3", "-0.125"),
    (" + ".join(str(n) for n in range(1, 41)), "820"),
    # Literals.
    ("1e3", "1000"),
    ("1_000 + 1", "1001"),
    ("0x10", "16"),
    ("9" * 1000, "9" * 1000),
    # Unicode and other friendly spellings.
    ("３×４", "12"),
    ("１２÷４", "3"),
    ("（１＋２）＊３", "9"),
    ("5 − 3", "2"),
    ("5 – 3", "2"),
    ("2 ✕ 3", "6"),
    ("2^10", "1024"),
    ("2＾3", "8"),
    ("2³", "8"),
    ("10⁻²", "0.01"),
    ("½ + ¼", "0.75"),
    ("2 × π", "6.28318530717959"),
    ("1 + 1 =", "2"),
    ("1 + 1 =?", "2"),
    ("  1 + 1 = ?  ", "2"),
    ("\t1 +\n 1\n", "2"),
    # Constants.
    ("pi", "3.14159265358979"),
    ("e", "2.71828182845905"),
    ("tau", "6.28318530717959"),
    # Exact big integers.
    ("2 ** 100", "1267650600228229401496703205376"),
    ("factorial(30)", "265252859812191058636308480000000"),
    ("10 ** 30 + 1", "1" + "0" * 29 + "1"),
    ("-(2 ** 64)", "-18446744073709551616"),
    ("(10 ** 1000) // (10 ** 998)", "100"),
    # Float formatting.
    ("0.1 + 0.2", "0.3"),
    ("1 / 3", "0.333333333333333"),
    ("2 / 3", "0.666666666666667"),
    ("123456789012345.6", "123456789012346"),
    ("1e20", "1e20"),
    ("2.0 ** 60", "1.15292150460685e18"),
    ("1.5e300 * 2", "3e300"),
    ("0.000001", "0.000001"),
    ("1e-7", "1e-7"),
    ("1 / 7e6", "1.42857142857143e-7"),
    ("-0.0", "0"),
    ("1.7976931348623157e308", "1.79769313486231e308"),
    ("-1 / 4", "-0.25"),
    # Every function.
    ("sqrt(16)", "4"),
    ("sqrt(2)", "1.4142135623731"),
    ("sqrt(10 ** 1000)", "1" + "0" * 500),
    ("cbrt(27)", "3"),
    ("cbrt(-8)", "-2"),
    ("exp(1)", "2.71828182845905"),
    ("log(e)", "1"),
    ("log(8, 2)", "3"),
    ("log2(1024)", "10"),
    ("log10(1000)", "3"),
    ("sin(pi / 2)", "1"),
    ("cos(0)", "1"),
    ("tan(pi / 4)", "1"),
    ("asin(1)", "1.5707963267949"),
    ("acos(1)", "0"),
    ("atan(1)", "0.785398163397448"),
    ("atan2(1, 1)", "0.785398163397448"),
    ("sinh(1)", "1.1752011936438"),
    ("cosh(0)", "1"),
    ("tanh(0)", "0"),
    ("degrees(pi)", "180"),
    ("radians(180)", "3.14159265358979"),
    ("abs(-5)", "5"),
    ("round(2.567, 2)", "2.57"),
    ("round(2.5)", "2"),
    ("round(1234, -2)", "1200"),
    ("floor(-2.5)", "-3"),
    ("ceil(2.1)", "3"),
    ("trunc(-2.7)", "-2"),
    ("factorial(5)", "120"),
    ("factorial(5.0)", "120"),
    ("comb(5, 2)", "10"),
    ("comb(10 ** 6, 2)", "499999500000"),
    ("perm(5, 2)", "20"),
    ("perm(4)", "24"),
    ("gcd(12, 18)", "6"),
    ("gcd(12, 18, 8)", "2"),
    ("lcm(4, 6)", "12"),
    ("lcm(4, 6, 10)", "60"),
    ("hypot(3, 4)", "5"),
    ("min(3, 1, 2)", "1"),
    ("max(2, 7.5)", "7.5"),
]


@pytest.mark.parametrize(("expression", "expected"), GOOD)
def test_good_expressions_give_the_expected_text(expression: str, expected: str) -> None:
    calculation = timed_calculate(expression)

    assert calculation.result == expected


@pytest.mark.parametrize(
    ("expression", "result", "value", "is_integer"),
    [
        ("2 ** 64", "18446744073709551616", 18446744073709551616.0, True),
        ("7 / 7", "1", 1.0, False),
        ("floor(7.5)", "7", 7.0, True),
        ("0.1 + 0.2", "0.3", 0.1 + 0.2, False),
        ("2 ** 2000", str(2**2000), math.inf, True),
        ("-(2 ** 2000)", str(-(2**2000)), -math.inf, True),
    ],
)
def test_value_and_is_integer(expression: str, result: str, value: float, is_integer: bool) -> None:
    assert calculate(expression) == Calculation(result=result, value=value, is_integer=is_integer)


HOSTILE = [
    # Empty and too long.
    ("", "empty"),
    ("   ", "empty"),
    ("=?", "empty"),
    ("1" * 1001, "too long"),
    ("1+" * 500 + "1", "too long"),
    ("⑴" * 700, "too long"),
    # Results too large to compute, caught before computing them.
    ("10**10**10", "too large"),
    ("9**9**9", "too large"),
    ("2**(2**20)", "too large"),
    ("(-3) ** 100000", "too large"),
    ("2 ** 10000", "too large"),
    ("*".join(["10**1000"] * 20), "too large"),
    ("factorial(1000) * factorial(1000)", "too large"),
    ("lcm(2**5000 + 1, 2**5000 + 3, 2**5000 + 5)", "too large"),
    ("comb(10 ** 6, 999)", "too large"),
    ("exp(1000)", "too large"),
    ("sinh(1000)", "too large"),
    ("10.0 ** 400", "too large"),
    ("1e308 * 10", "too large"),
    ("1e400", "too large"),
    ("10 ** 1000 / 3", "too large"),
    ("2 ** -20000", "too close to zero"),
    ("factorial(10**6)", "limited to numbers up to 1,000"),
    ("factorial(1001)", "limited to numbers up to 1,000"),
    ("comb(10 ** 7, 2)", "limited to n up to"),
    ("comb(10000, 5000)", "limited to k or n - k"),
    ("perm(10 ** 6, 1001)", "limited to k up to"),
    ("round(1, 1000)", "at most 400 digits"),
    # Too deep or too big a tree.
    ("(" * 250 + "1" + ")" * 250, "nested too deeply"),
    ("-" * 200 + "1", "nested too deeply"),
    ("2**" * 100 + "2", "nested too deeply"),
    ("sqrt(" * 40 + "1" + ")" * 40, "nested too deeply"),
    ("(1+" * 40 + "1" + ")" * 40, "nested too deeply"),
    # "¼" becomes "(1/4)", three nodes from one character.
    ("¼+" * 333 + "1", "too complex"),
    # Arithmetic with no answer.
    ("1 / 0", "division by zero"),
    ("1 // 0", "division by zero"),
    ("1 % 0", "division by zero"),
    ("1.5 / 0.0", "division by zero"),
    ("0 ** -1", "zero cannot be raised to a negative power"),
    ("sqrt(-1)", "sqrt(-1) is not defined"),
    ("log(0)", "log(0) is not defined"),
    ("log(-1)", "not defined"),
    ("asin(2)", "not defined"),
    ("log(8, 1)", "not defined"),
    ("(-8) ** 0.5", "not a real number"),
    ("(-8) ** (1/3)", "not a real number"),
    ("factorial(-1)", "negative"),
    ("factorial(5.5)", "whole numbers"),
    ("gcd(1.5, 2)", "whole numbers"),
    # Names and calls outside the whitelist.
    ("x", "unknown name 'x'"),
    ("PI", "did you mean 'pi'"),
    ("Sqrt(4)", "did you mean 'sqrt'"),
    ("foo(1)", "unknown function 'foo'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("eval('1')", "unknown function 'eval'"),
    ("pow(2, 3)", "unknown function 'pow'"),
    ("isqrt(4)", "unknown function 'isqrt'"),
    ("gamma(5)", "unknown function 'gamma'"),
    ("sqrt", "sqrt is a function"),
    ("pi(2)", "pi is a constant"),
    ("2(3)", "write * for multiplication"),
    ("(1 + 2)(3)", "write * for multiplication"),
    ("1½", "write * for multiplication"),
    ("math.sqrt(2)", "attribute access"),
    ("(1).real", "attribute access"),
    ("sqrt(x=4)", "keyword arguments"),
    ("max(*[1, 2])", "unpacking"),
    ("sqrt(1, 2)", "takes 1 argument, but 2 were given"),
    ("atan2(1)", "takes 2 arguments, but 1 was given"),
    ("min()", "at least 1 argument"),
    ("round(1, 2, 3)", "1 or 2 arguments"),
    # Python syntax that is not arithmetic.
    ("lambda: 1", "lambda"),
    ("[x for x in [1]]", "comprehensions"),
    ("(x for x in [1])", "comprehensions"),
    ("{x: 1 for x in [1]}", "comprehensions"),
    ("[1, 2][0]", "indexing"),
    ("'abc'", "strings"),
    ("b'abc'", "strings"),
    ("f'{1}'", "strings"),
    ("'a'()", "strings"),
    ("1j", "complex"),
    ("True", "true and false"),
    ("None", "not a number"),
    ("...", "not a number"),
    ("1 < 2", "comparisons"),
    ("1 == 1", "comparisons"),
    ("1 and 2", "logical"),
    ("not 1", "logical"),
    ("1 if 1 else 2", "conditional"),
    ("(x := 1)", "assignment"),
    ("[1, 2]", "lists"),
    ("(1, 2)", "lists"),
    ("1,000", "write 1.5, not 1,5, and 1000, not 1,000"),
    ("{1: 2}", "dictionaries"),
    ("{1}", "sets"),
    ("1 << 2", "bit shifts"),
    ("1 >> 2", "bit shifts"),
    ("1 & 2", "bitwise"),
    ("1 | 2", "bitwise"),
    ("~1", "bitwise"),
    ("1 @ 2", "@"),
    ("await x", "not supported"),
    ("(yield)", "not supported"),
    # Not expressions at all.
    ("1 +", "not a valid expression"),
    ("(1 + 2", "not a valid expression"),
    ("1 + 2 = 3", "not a valid expression (near '= 3'): invalid syntax."),
    ("2pi", "not a valid expression"),
    ("x = 1", "not a valid expression"),
    ("import os", "not a valid expression"),
    ("1 # 2", "'#' is not an operator"),
    ("1\x00", "characters that cannot be used"),
    ("\ud800", "characters that cannot be used"),
    ("√2", "not a valid expression"),
]


@pytest.mark.parametrize(("expression", "fragment"), HOSTILE)
def test_hostile_or_invalid_expressions_are_refused_quickly(expression: str, fragment: str) -> None:
    with pytest.raises(CalculationError) as caught:
        timed_calculate(expression)

    message = str(caught.value)
    assert fragment.lower() in message.lower()
    assert message.endswith((".", "?"))


def test_the_functions_are_exactly_those_the_api_promises() -> None:
    proto = (Path(__file__).parents[1] / "protos/chatagent/v1/tools.proto").read_text("utf-8")
    comment = proto.split("message CalculateRequest")[0].rsplit("\n\n", 1)[1]
    promised = re.search(r"the functions (.*?)\. Angles", comment.replace("//", ""), re.DOTALL)
    assert promised is not None

    with pytest.raises(CalculationError) as caught:
        calculate("nosuch(1)")

    listed = str(caught.value).split("The supported functions are: ")[1].rstrip(".")
    assert set(listed.split(", ")) == set(re.split(r",\s*|\s+and\s+", promised[1].strip()))


def test_bounds_are_inclusive() -> None:
    largest_power = calculate(f"2 ** {calculator.MAX_INTEGER_BITS - 1}")
    largest_factorial = calculate(f"factorial({calculator.MAX_FACTORIAL})")
    longest_text = "1" + "+1" * ((calculator.MAX_EXPRESSION_CHARS - 1) // 2) + " "
    longest = calculate(longest_text)
    deepest = calculate("-" * (calculator.MAX_DEPTH - 1) + "1")

    assert int(largest_power.result).bit_length() == calculator.MAX_INTEGER_BITS
    assert int(largest_factorial.result) == math.factorial(calculator.MAX_FACTORIAL)
    assert len(longest_text) == calculator.MAX_EXPRESSION_CHARS
    assert longest.result == str(calculator.MAX_EXPRESSION_CHARS // 2)
    assert deepest.result == "-1"


def test_the_largest_integers_print_within_pythons_digit_limit() -> None:
    bits = calculator.MAX_INTEGER_BITS
    largest = calculate(f"(2 ** {bits - 1} - 1) * 2 + 1")

    assert int(largest.result) == 2**bits - 1
    assert len(largest.result) == calculator.MAX_INTEGER_DIGITS
    assert calculator.MAX_INTEGER_DIGITS < 4300


# --- Properties ----------------------------------------------------------------------------------


def assert_refusal_is_deliberate(error: CalculationError) -> None:
    assert str(error) != calculator.INTERNAL_ERROR, "a bug was hidden behind the safety net"


TOKENS = [
    *"0123456789+-*/%^().,=? eE_x",
    "**",
    "//",
    "1e308",
    "10**",
    "9**9",
    "pi",
    "tau",
    "×",
    "÷",
    "−",
    "²",
    "½",
    "１",
    "＊",
    *(f"{name}(" for name in ("sqrt", "log", "factorial", "comb", "perm", "round", "min", "lcm")),
    "lambda",
    "'",
    "[",
    "]",
    "{",
    "}",
    ":=",
    "<<",
    "if",
    "not",
    "#",
]

ANY_TEXT = st.one_of(
    st.text(max_size=1200),
    st.lists(st.sampled_from(TOKENS), max_size=400).map("".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT)
def test_any_text_is_answered_or_refused_quickly(text: str) -> None:
    try:
        calculation = timed_calculate(text)
    except CalculationError as error:
        assert_refusal_is_deliberate(error)
    else:
        assert calculation.result


def number_text(value: int | float) -> str:
    text = repr(value)
    return f"({text})" if text.startswith("-") else text


LEAVES = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6).map(number_text),
    st.integers(min_value=0, max_value=10**30).map(number_text),
    st.floats(allow_nan=False, allow_infinity=False).map(number_text),
    st.sampled_from(["0", "1", "2", "-1", "0.5", "1000", "pi", "e", "tau"]),
)
UNARY_FUNCTIONS = [
    "sqrt",
    "cbrt",
    "exp",
    "log",
    "log2",
    "log10",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "sinh",
    "cosh",
    "tanh",
    "degrees",
    "radians",
    "abs",
    "round",
    "floor",
    "ceil",
    "trunc",
    "factorial",
    "perm",
]
BINARY_FUNCTIONS = ["log", "atan2", "round", "comb", "perm"]
VARIADIC_FUNCTIONS = ["gcd", "lcm", "hypot", "min", "max"]
OPERATORS = ["+", "-", "*", "/", "//", "%", "**", "^"]


def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds("({} {} {})".format, children, st.sampled_from(OPERATORS), children),
        st.builds("{}({})".format, st.sampled_from(["-", "+"]), children),
        st.builds("{}({})".format, st.sampled_from(UNARY_FUNCTIONS), children),
        st.builds("{}({}, {})".format, st.sampled_from(BINARY_FUNCTIONS), children, children),
        st.builds(
            "{}({})".format,
            st.sampled_from(VARIADIC_FUNCTIONS),
            st.lists(children, min_size=1, max_size=4).map(", ".join),
        ),
    )


WELL_FORMED = st.recursive(LEAVES, extend, max_leaves=30)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WELL_FORMED)
def test_well_formed_expressions_give_consistent_results(expression: str) -> None:
    try:
        calculation = timed_calculate(expression)
    except CalculationError as error:
        assert_refusal_is_deliberate(error)
        return
    if calculation.is_integer:
        assert re.fullmatch(r"-?[0-9]+", calculation.result)
        exact = int(calculation.result)
        try:
            expected_value = float(exact)
        except OverflowError:
            expected_value = math.inf if exact > 0 else -math.inf
        assert calculation.value == expected_value
    else:
        assert math.isfinite(calculation.value)
        assert math.isclose(float(calculation.result), calculation.value, rel_tol=1e-14)
        assert "e+" not in calculation.result
        if "e" in calculation.result:
            assert not 1e-6 <= abs(calculation.value) < 1e15
        if "." in calculation.result:
            assert not calculation.result.split("e")[0].endswith("0")


IntegerExpression = tuple[str, int | None]


def integer_leaf(value: int) -> IntegerExpression:
    return number_text(value), value


def combine(left: IntegerExpression, operator: str, right: IntegerExpression) -> IntegerExpression:
    text = f"({left[0]} {operator} {right[0]})"
    a, b = left[1], right[1]
    if a is None or b is None or (operator in ("//", "%") and b == 0):
        return text, None
    if operator == "+":
        return text, a + b
    if operator == "-":
        return text, a - b
    if operator == "*":
        return text, a * b
    return text, a // b if operator == "//" else a % b


INTEGER_EXPRESSIONS = st.recursive(
    st.integers(min_value=-(10**12), max_value=10**12).map(integer_leaf),
    lambda children: st.builds(
        combine, children, st.sampled_from(["+", "-", "*", "//", "%"]), children
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(INTEGER_EXPRESSIONS)
def test_integer_arithmetic_is_exact(case: IntegerExpression) -> None:
    expression, expected = case

    if expected is None:
        with pytest.raises(CalculationError, match="Division by zero"):
            timed_calculate(expression)
    else:
        calculation = timed_calculate(expression)
        assert calculation.result == str(expected)
        assert calculation.is_integer
