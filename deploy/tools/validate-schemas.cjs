// Validates Kubernetes objects against JSON schemas generated from the Kubernetes OpenAPI
// spec (kubernetes-models) and from the Prometheus Operator CRDs
// (@kubernetes-models/prometheus-operator): types, required fields, enums, formats.
//
// usage: node validate-schemas.cjs TOOLS_DIR < objects.json   (a JSON array of objects)
// Prints one line per invalid object and exits 1; exits 2 when a kind has no schema.
"use strict";
const { createRequire } = require("module");
const path = require("path");
const fs = require("fs");

const toolsDir = process.argv[2];
if (!toolsDir) {
  console.error("usage: node validate-schemas.cjs TOOLS_DIR < objects.json");
  process.exit(2);
}
const requireTool = createRequire(path.join(path.resolve(toolsDir), "package.json"));

// "v1" -> kubernetes-models/v1/Kind; "apps/v1" -> kubernetes-models/apps/v1/Kind;
// monitoring.coreos.com/* -> the Prometheus Operator package.
function modelFor(apiVersion, kind) {
  const pkg = apiVersion.startsWith("monitoring.coreos.com/")
    ? "@kubernetes-models/prometheus-operator"
    : "kubernetes-models";
  const id = `${pkg}/${apiVersion}/${kind}`;
  try {
    return requireTool(id)[kind];
  } catch (e) {
    return undefined;
  }
}

const objects = JSON.parse(fs.readFileSync(0, "utf8"));
let invalid = 0;
let unknown = 0;
for (const obj of objects) {
  const name = `${obj.kind} ${obj.metadata && obj.metadata.namespace ? obj.metadata.namespace + "/" : ""}${obj.metadata && obj.metadata.name}`;
  const Model = modelFor(String(obj.apiVersion), String(obj.kind));
  if (!Model) {
    console.log(`${name}: no schema for apiVersion ${obj.apiVersion} kind ${obj.kind}`);
    unknown++;
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (e) {
    console.log(`${name}: ${e.message}`);
    invalid++;
  }
}
if (unknown > 0) process.exit(2);
if (invalid > 0) process.exit(1);
console.log(`${objects.length} objects valid`);
