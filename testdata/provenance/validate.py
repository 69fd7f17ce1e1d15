"""Validates an in-toto statement (a file, or standard input) against the
in-toto Statement v1 schema and its predicate against the SLSA provenance v1
schema kept next to this script. Exits 1 naming every violation."""
import json
import pathlib
import sys

import jsonschema

here = pathlib.Path(__file__).parent
statement = json.load(open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin)
errors = []
for schema_file, document in [
    ("in-toto-statement-v1.schema.json", statement),
    ("slsa-provenance-v1.schema.json", statement.get("predicate")),
]:
    schema = json.loads((here / schema_file).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for error in validator.iter_errors(document):
        errors.append(f"{schema_file}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("valid")
