// Everything both entry points (`@berth/sdk` for Node, `@berth/sdk/web` for browsers) export.

export * from "./gen/berth/workspace/v1/error_reason_pb.js";
export * from "./gen/berth/workspace/v1/filesystem_service_pb.js";
export * from "./gen/berth/workspace/v1/process_service_pb.js";
export * from "./gen/berth/workspace/v1/workspace_pb.js";
export * from "./gen/berth/workspace/v1/workspace_service_pb.js";
export {
  bearerTokenInterceptor,
  createBerthClientFromTransport,
  type BerthClient,
  type BerthToken,
  type BerthTransportOptions,
} from "./client.js";
export { runCommand, streamCommand, type CommandEvent, type CommandOptions, type CommandResult } from "./commands.js";
export { readFile, readTextFile, writeFile, type ReadFileOptions, type WriteFileOptions } from "./files.js";
export {
  ArchiveIntegrityError,
  exportData,
  exportDataBytes,
  importData,
  type ArchiveSource,
  type DataExport,
  type ExportDataOptions,
  type ImportDataOptions,
} from "./data.js";
export { Sha256 } from "./sha256.js";
export { BERTH_ERROR_DOMAIN, berthErrorInfo, ErrorInfoSchema, type BerthErrorInfo, type ErrorInfo } from "./errors.js";
export { Code, ConnectError } from "@connectrpc/connect";
