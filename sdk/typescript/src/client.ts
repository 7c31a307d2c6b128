// Transport-independent parts of the berth client: the three service clients over a transport.

import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { FilesystemService } from "./gen/berth/workspace/v1/filesystem_service_pb.js";
import { ProcessService } from "./gen/berth/workspace/v1/process_service_pb.js";
import { WorkspaceService } from "./gen/berth/workspace/v1/workspace_service_pb.js";

/** Clients of berth's three services, sharing one transport. */
export interface BerthClient {
  /** WorkspaceService: create, list, start, stop and delete workspaces, snapshots, data, events. */
  workspaces: Client<typeof WorkspaceService>;
  /** FilesystemService: read, write and watch files of a workspace. */
  files: Client<typeof FilesystemService>;
  /** ProcessService: start processes in a workspace and stream their output. */
  processes: Client<typeof ProcessService>;
  /**
   * Whether the transport can stream requests (gRPC over HTTP/2; gRPC-web cannot). `writeFile`
   * uses the client-streaming WriteFile when true and unary WriteFileChunk calls otherwise.
   */
  canStreamRequests?: boolean;
}

/** Options of {@link createBerthClientFromTransport}. */
export interface BerthTransportOptions {
  /**
   * Whether the transport can stream requests: true for a gRPC transport over HTTP/2, false
   * (the default) for gRPC-web.
   */
  canStreamRequests?: boolean;
}

/** Creates the berth service clients over any Connect transport you built yourself. */
export function createBerthClientFromTransport(transport: Transport, options: BerthTransportOptions = {}): BerthClient {
  return {
    workspaces: createClient(WorkspaceService, transport),
    files: createClient(FilesystemService, transport),
    processes: createClient(ProcessService, transport),
    canStreamRequests: options.canStreamRequests ?? false,
  };
}

/**
 * A bearer token for a berth that checks tokens (`berth serve --tokens-file`), or a function
 * returning the current one, called before every call (return `undefined` to send none).
 */
export type BerthToken = string | (() => string | undefined | Promise<string | undefined>);

/**
 * An interceptor that sends `authorization: Bearer <token>` with every call, over any transport
 * (gRPC and gRPC-web carry it the same way). `createBerthClient({ token })` adds it for you.
 */
export function bearerTokenInterceptor(token: BerthToken): Interceptor {
  return (next) => async (request) => {
    const value = typeof token === "function" ? await token() : token;
    if (value) {
      request.header.set("authorization", `Bearer ${value}`);
    }
    return await next(request);
  };
}
