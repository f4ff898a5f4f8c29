"""A package installed into a throw-away venv by the tests."""


def greet(name):
    return "hello " + name
