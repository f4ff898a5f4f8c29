"""Checks an answer of the HTTP service against docs/openapi.yaml (JSON Schema 2020-12 via python3-jsonschema)."""
import json
import re

import jsonschema
import yaml


class OpenApi:
    def __init__(self, path):
        with open(path) as f:
            self.doc = yaml.safe_load(f)
        assert self.doc["openapi"].startswith("3.1")
        self.resolver = jsonschema.RefResolver.from_schema(self.doc)
        self.checked = set()  # (method, template) of every operation an answer was checked for
        self.routes = []
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            for method in item:
                self.routes.append((re.compile(pattern), method.upper(), template))

    def operations(self):
        return {(m, t) for _, m, t in self.routes}

    def _operation(self, method, path):
        path = path.split("?")[0]
        for pattern, m, template in self.routes:
            if m == method and pattern.match(path):
                return template, self.doc["paths"][template][method.lower()]
        raise AssertionError("%s %s is not in the OpenAPI file" % (method, path))

    def _resolve(self, node):
        while "$ref" in node:
            _, node = self.resolver.resolve(node["$ref"])
        return node

    def validate_value(self, schema, value):
        jsonschema.Draft202012Validator(schema, resolver=self.resolver).validate(value)

    def check_error(self, status, headers, body):
        """An answer to a path the file does not list: an Error object."""
        assert headers.get("content-type", "").startswith("application/json")
        value = json.loads(body)
        self.validate_value({"$ref": "#/components/schemas/Error"}, value)
        return value

    def check(self, method, path, status, headers, body):
        """Validates one answer (status, headers with lower-case names, body bytes); returns its JSON or text."""
        template, op = self._operation(method, path)
        responses = op["responses"]
        assert str(status) in responses or "default" in responses, \
            "%s %s: status %d is not documented" % (method, template, status)
        response = self._resolve(responses.get(str(status), responses.get("default")))
        for name, h in response.get("headers", {}).items():
            if h.get("required"):
                assert name.lower() in headers, "%s %s %d: header %s missing" % (method, template, status, name)
        ctype = headers.get("content-type", "").split(";")[0].strip()
        content = response.get("content", {})
        assert ctype in content, "%s %s %d: content type %r is not documented" % (method, template, status, ctype)
        schema = content[ctype]["schema"]
        if ctype == "application/json":
            value = json.loads(body)
            self.validate_value(schema, value)
        elif ctype == "application/x-ndjson":
            value = [json.loads(line) for line in body.decode().splitlines() if line]
            for line in value:
                self.validate_value(schema, line)
        else:
            value = body.decode()
            self.validate_value(schema, value)
        self.checked.add((method, template))
        return value
