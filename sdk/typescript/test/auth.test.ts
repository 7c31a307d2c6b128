// Tokens and TLS with @berth/sdk: a berth with a tokens file and a certificate from a test CA
// (scripts/test-sdks.sh starts it), over both Node transports: the token authenticates, no
// token is UNAUTHENTICATED, a read token outside its scope is PERMISSION_DENIED, a token given
// as a function is asked on every call, and a client that does not trust the CA cannot connect.
//
// Environment: BERTH_TEST_TLS_SERVER (https://localhost:PORT), BERTH_TEST_CA_FILE (the CA's
// PEM), BERTH_TEST_TOKEN (an admin token), BERTH_TEST_READ_TOKEN (read on workspace
// sdk-tls-reader only).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { berthErrorInfo, Code, ConnectError, createBerthClient } from "@berth/sdk";

function requireEnv(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} must be set (see scripts/test-sdks.sh)`);
  }
  return value;
}

const server = requireEnv("BERTH_TEST_TLS_SERVER");
const ca = readFileSync(requireEnv("BERTH_TEST_CA_FILE"));
const token = requireEnv("BERTH_TEST_TOKEN");
const readToken = requireEnv("BERTH_TEST_READ_TOKEN");

async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  assert.fail("the call succeeded");
}

for (const transport of ["grpc", "grpc-web"] as const) {
  describe(`tokens and TLS over ${transport}`, () => {
    test("a token over TLS authenticates; none is UNAUTHENTICATED", async () => {
      const berth = createBerthClient({ baseUrl: server, transport, token, ca });
      const { workspaces } = await berth.workspaces.listWorkspaces({});
      assert.ok(Array.isArray(workspaces));
      const missing = await berth.workspaces.getWorkspace({ workspaceId: "sdk-tls-missing" }).catch((err) => err);
      assert.equal(berthErrorInfo(missing)?.reason, "WORKSPACE_NOT_FOUND", "an admin token reaches the handler");

      const anonymous = createBerthClient({ baseUrl: server, transport, ca });
      const refused = await failure(anonymous.workspaces.listWorkspaces({}));
      assert.equal(refused.code, Code.Unauthenticated);
      assert.equal(berthErrorInfo(refused)?.reason, "UNAUTHENTICATED");
    });

    test("a read token outside its scope is PERMISSION_DENIED; a token function is asked per call", async () => {
      let asked = 0;
      const reader = createBerthClient({
        baseUrl: server,
        transport,
        ca,
        token: () => {
          asked += 1;
          return readToken;
        },
      });
      const denied = await failure(reader.workspaces.getWorkspace({ workspaceId: "sdk-tls-elsewhere" }));
      assert.equal(denied.code, Code.PermissionDenied);
      assert.equal(berthErrorInfo(denied)?.reason, "PERMISSION_DENIED");
      const own = await failure(reader.workspaces.getWorkspace({ workspaceId: "sdk-tls-reader" }));
      assert.equal(own.code, Code.NotFound, "its own id answers as usual");
      assert.equal(asked, 2);
    });

    test("a client that does not trust the CA cannot connect", async () => {
      const untrusting = createBerthClient({ baseUrl: server, transport, token });
      const refused = await failure(untrusting.workspaces.listWorkspaces({}));
      assert.match(refused.message, /certificate/);
    });
  });
}
