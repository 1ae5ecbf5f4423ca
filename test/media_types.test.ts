/** Manifest media types and Accept negotiation. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  acceptedTypes,
  accepts,
  DEFAULT_ACCEPT,
  DOCKER_LIST,
  DOCKER_MANIFEST,
  DOCKER_V1_SIGNED,
  manifestMediaType,
  OCI_INDEX,
  OCI_MANIFEST,
  upstreamAccept,
} from "../src/oci/media_types.ts";

describe("constants", () => {
  test("media type strings", () => {
    assert.equal(OCI_MANIFEST, "application/vnd.oci.image.manifest.v1+json");
    assert.equal(OCI_INDEX, "application/vnd.oci.image.index.v1+json");
    assert.equal(DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json");
    assert.equal(DOCKER_LIST, "application/vnd.docker.distribution.manifest.list.v2+json");
  });
  test("DEFAULT_ACCEPT names all four modern manifest types", () => {
    const names = DEFAULT_ACCEPT.split(",").map((s) => s.trim()).sort();
    assert.deepEqual(names, [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].sort());
  });
});

describe("acceptedTypes", () => {
  test("strips parameters, lowercases, drops empties", () => {
    assert.deepEqual(acceptedTypes(`${OCI_INDEX.toUpperCase()}; q=0.9, ,${DOCKER_MANIFEST}`), [OCI_INDEX, DOCKER_MANIFEST]);
    assert.deepEqual(acceptedTypes(null), []);
    assert.deepEqual(acceptedTypes(""), []);
  });
});

describe("accepts", () => {
  test("no Accept takes anything", () => {
    assert.equal(accepts(null, OCI_MANIFEST), true);
    assert.equal(accepts("", DOCKER_V1_SIGNED), true);
  });
  test("wildcards take anything", () => {
    assert.equal(accepts("*/*", OCI_INDEX), true);
    assert.equal(accepts("application/*", DOCKER_MANIFEST), true);
    assert.equal(accepts(`${OCI_MANIFEST}, */*;q=0.1`, DOCKER_LIST), true);
  });
  test("an explicit list takes only its members", () => {
    const docker = `${DOCKER_MANIFEST}, ${DOCKER_LIST}`;
    assert.equal(accepts(docker, DOCKER_MANIFEST), true);
    assert.equal(accepts(docker, DOCKER_LIST), true);
    assert.equal(accepts(docker, OCI_MANIFEST), false);
    assert.equal(accepts(docker, OCI_INDEX), false);
  });
  test("q-parameters do not hide a type", () => {
    const a = `${OCI_INDEX};q=0.5, ${OCI_MANIFEST}; q=0.9,${DOCKER_MANIFEST}`;
    assert.equal(accepts(a, OCI_INDEX), true);
    assert.equal(accepts(a, OCI_MANIFEST), true);
    assert.equal(accepts(a, DOCKER_MANIFEST), true);
    assert.equal(accepts(a, DOCKER_LIST), false);
  });
  test("comparison is case-insensitive", () => {
    assert.equal(accepts(OCI_MANIFEST.toUpperCase(), OCI_MANIFEST), true);
    assert.equal(accepts(OCI_MANIFEST, OCI_MANIFEST.toUpperCase()), true);
  });
  test("text/* is not a wildcard for a manifest", () => {
    assert.equal(accepts("text/*", OCI_MANIFEST), false);
  });
});

describe("upstreamAccept", () => {
  test("no Accept or only */* → the default list", () => {
    assert.equal(upstreamAccept(null), DEFAULT_ACCEPT);
    assert.equal(upstreamAccept(""), DEFAULT_ACCEPT);
    assert.equal(upstreamAccept("*/*"), DEFAULT_ACCEPT);
  });
  test("a client's explicit list is passed on verbatim", () => {
    const a = `${DOCKER_MANIFEST}, ${DOCKER_LIST};q=0.5`;
    assert.equal(upstreamAccept(a), a);
    const b = `${OCI_MANIFEST}, */*`;
    assert.equal(upstreamAccept(b), b);
  });
});

describe("manifestMediaType", () => {
  test("a specific Content-Type wins over the JSON field", () => {
    assert.equal(manifestMediaType(DOCKER_MANIFEST, { mediaType: OCI_MANIFEST }), DOCKER_MANIFEST);
  });
  test("Content-Type parameters and case are dropped", () => {
    assert.equal(manifestMediaType(`${OCI_INDEX.toUpperCase()}; charset=utf-8`, {}), OCI_INDEX);
  });
  test("generic Content-Types fall back to the JSON mediaType", () => {
    for (const ct of ["application/json", "application/json; charset=utf-8", "text/plain", "application/octet-stream", null, ""]) {
      assert.equal(manifestMediaType(ct, { mediaType: DOCKER_LIST, manifests: [] }), DOCKER_LIST, String(ct));
    }
  });
  test("no mediaType field: shape decides (manifests → index, layers → manifest)", () => {
    assert.equal(manifestMediaType("application/json", { schemaVersion: 2, manifests: [] }), OCI_INDEX);
    assert.equal(manifestMediaType(null, { schemaVersion: 2, config: {}, layers: [] }), OCI_MANIFEST);
  });
  test("nothing to go on → null", () => {
    assert.equal(manifestMediaType(null, {}), null);
    assert.equal(manifestMediaType("application/json", null), null);
    assert.equal(manifestMediaType(null, "a string"), null);
    assert.equal(manifestMediaType(null, { mediaType: "" }), null);
    assert.equal(manifestMediaType(null, { mediaType: 42 }), null);
  });
});

test("q=0 in Accept means the type is not acceptable", () => {
  assert.equal(accepts("application/vnd.oci.image.index.v1+json;q=0, application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"), false);
  assert.equal(accepts("application/vnd.oci.image.index.v1+json;q=0.5", "application/vnd.oci.image.index.v1+json"), true);
});
