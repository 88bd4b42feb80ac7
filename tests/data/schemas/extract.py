#!/usr/bin/env python3
"""Extracts the schema subsets the alert-format tests validate against.

    extract.py ocsf OCSF_SCHEMA_CHECKOUT > ocsf-1.8.0.json   (tag v1.8.0 / 3dcb905d)
    extract.py ecs ECS_CHECKOUT > ecs-9.4.0.json             (tag v9.4.0)

OCSF: the Detection Finding class (2004) resolved over `extends` and
`$include`, each attribute with its type (from dictionary.json), whether it
is an array, its requirement, its enum and the profile that brings it
(an attribute of a profile exists only where the profile is applied); plus every object reachable from
the attributes our output uses (OBJECTS). ECS: every field of the field sets
our output touches, with its type and allowed values, and the names of all
field sets (a top-level name outside them is a custom field).
"""
import csv, io, json, os, sys

OBJECTS = ["metadata", "product", "finding_info", "analytic", "evidences", "actor",
           "user", "session", "api", "service", "resource_details", "network_endpoint",
           "observable"]


def ocsf(root):
    load = lambda p: json.load(open(os.path.join(root, p)))
    dictionary = load("dictionary.json")["attributes"]
    objects = {}
    for f in os.listdir(os.path.join(root, "objects")):
        d = load(os.path.join("objects", f))
        objects[d["name"]] = d

    def attrs_of(d, base_dir):
        out = {}
        for k, v in d.get("attributes", {}).items():
            if k == "$include":
                for inc in v if isinstance(v, list) else [v]:
                    sub = attrs_of(load(inc), base_dir)
                    if inc.startswith("profiles/"):
                        name = load(inc)["name"]
                        sub = {a: {**b, "profile": name} for a, b in sub.items()}
                    out.update(sub)
                continue
            out[k] = v
        return out

    def resolve(d, lookup):
        parent = d.get("extends")
        merged = {}
        if parent:
            merged = resolve(lookup(parent), lookup)
        for k, v in attrs_of(d, None).items():
            merged[k] = {**merged.get(k, {}), **v}
        return merged

    def typed(attrs):
        out = {}
        for k, v in attrs.items():
            g = dictionary.get(k, {})
            enum = v.get("enum") or g.get("enum")
            out[k] = {
                "type": v.get("type") or g.get("type"),
                "array": bool(v.get("is_array", g.get("is_array", False))),
                "requirement": v.get("requirement", "optional"),
            }
            if v.get("profile"):
                out[k]["profile"] = v["profile"]
            if enum:
                out[k]["enum"] = sorted(int(e) for e in enum)
        return out

    events = {}
    for dirpath, _, files in os.walk(os.path.join(root, "events")):
        for f in files:
            d = json.load(open(os.path.join(dirpath, f)))
            events[d["name"]] = d
    cls = events["detection_finding"]
    attrs = typed(resolve(cls, lambda n: events[n]))
    # The class and category ids are the class's own, not base_event's enum.
    attrs["class_uid"]["enum"] = [2004]
    attrs["category_uid"]["enum"] = [2]
    attrs["type_uid"].pop("enum", None)
    objs = {n: typed(resolve(objects[n], lambda m: objects[m])) for n in OBJECTS}
    return {
        "version": load("version.json")["version"],
        "class": {"name": "detection_finding", "uid": 2004, "category_uid": 2, "attributes": attrs},
        "objects": objs,
    }


def ecs(root):
    text = open(os.path.join(root, "generated/csv/fields.csv")).read()
    import yaml  # the flat YAML has the allowed values
    flat = yaml.safe_load(open(os.path.join(root, "generated/ecs/ecs_flat.yml")))
    rows = list(csv.DictReader(io.StringIO(text)))
    sets = sorted({r["Field_Set"] for r in rows})
    keep = {"base", "event", "rule", "organization", "user", "source", "gen_ai", "ecs",
            "observer", "threat"}
    fields = {}
    for r in rows:
        if r["Field_Set"] not in keep:
            continue
        f = {"type": r["Type"]}
        allowed = flat.get(r["Field"], {}).get("allowed_values")
        if allowed:
            f["allowed"] = [a["name"] for a in allowed]
        if "array" in (r["Normalization"] or ""):
            f["array"] = True
        fields[r["Field"]] = f
    top = sorted({r["Field"].split(".")[0] for r in rows})
    return {"version": rows[0]["ECS_Version"], "field_sets": sets, "top_level": top, "fields": fields}


if __name__ == "__main__":
    kind, root = sys.argv[1], sys.argv[2]
    json.dump({"ocsf": ocsf, "ecs": ecs}[kind](root), sys.stdout, indent=1, sort_keys=True)
    print()
