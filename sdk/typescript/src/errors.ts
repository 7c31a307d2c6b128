// Reading the gRPC status code and the google.rpc.ErrorInfo reason of a failed berth call.
//
// Every error berth returns carries, in the `grpc-status-details-bin` trailer, a google.rpc.Status
// whose details hold a google.rpc.ErrorInfo with domain `berth.dev` and a reason naming an
// ErrorReason value (`WORKSPACE_NOT_FOUND`). Connect-ES decodes that trailer into
// `ConnectError.details`; `berthErrorInfo` picks the ErrorInfo out of it.

import { create, createFileRegistry, type Message } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

/** The domain of every ErrorInfo berth sends. */
export const BERTH_ERROR_DOMAIN = "berth.dev";

/**
 * google.rpc.ErrorInfo (from google/rpc/error_details.proto): the machine-readable cause of an
 * error. Berth sets `reason` to an ErrorReason value name and `domain` to `berth.dev`.
 */
export type ErrorInfo = Message<"google.rpc.ErrorInfo"> & {
  /** The reason of the error, an ErrorReason value name such as `WORKSPACE_NOT_FOUND`. */
  reason: string;
  /** The logical grouping the reason belongs to: `berth.dev` for berth. */
  domain: string;
  /** Additional context, such as `workspace_id`, `path` or `image`. */
  metadata: { [key: string]: string };
};

// A hand-written descriptor of google.rpc.ErrorInfo, field for field as in
// googleapis/google/rpc/error_details.proto, so the SDK needs no extra generated code.
const errorDetailsFile = create(FileDescriptorProtoSchema, {
  name: "google/rpc/error_details.proto",
  package: "google.rpc",
  syntax: "proto3",
  messageType: [
    {
      name: "ErrorInfo",
      field: [
        { name: "reason", jsonName: "reason", number: 1, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL },
        { name: "domain", jsonName: "domain", number: 2, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL },
        {
          name: "metadata",
          jsonName: "metadata",
          number: 3,
          type: FieldDescriptorProto_Type.MESSAGE,
          label: FieldDescriptorProto_Label.REPEATED,
          typeName: ".google.rpc.ErrorInfo.MetadataEntry",
        },
      ],
      nestedType: [
        {
          name: "MetadataEntry",
          field: [
            { name: "key", jsonName: "key", number: 1, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL },
            { name: "value", jsonName: "value", number: 2, type: FieldDescriptorProto_Type.STRING, label: FieldDescriptorProto_Label.OPTIONAL },
          ],
          options: { mapEntry: true },
        },
      ],
    },
  ],
});

/** Descriptor of google.rpc.ErrorInfo, usable with `ConnectError.findDetails`. */
export const ErrorInfoSchema = createFileRegistry(errorDetailsFile, () => undefined).getMessage(
  "google.rpc.ErrorInfo",
) as unknown as GenMessage<ErrorInfo>;

const codeNames: Record<Code, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** What a failed berth call says about itself; see {@link berthErrorInfo}. */
export interface BerthErrorInfo {
  /** The gRPC status code, as Connect's `Code` enum (`Code.NotFound` is 5). */
  code: Code;
  /** The canonical gRPC name of the code: `NOT_FOUND`, `INVALID_ARGUMENT`, ... */
  codeName: string;
  /**
   * The ErrorInfo reason, an ErrorReason value name such as `WORKSPACE_NOT_FOUND`. Undefined when
   * the error carries no ErrorInfo (for example a network failure that never reached berth).
   */
  reason: string | undefined;
  /** The ErrorInfo domain (`berth.dev`), undefined without ErrorInfo. */
  domain: string | undefined;
  /** The ErrorInfo metadata (for example `workspace_id`); empty without ErrorInfo. */
  metadata: { [key: string]: string };
  /** The status message, without Connect's `[code]` prefix. */
  message: string;
}

/**
 * Reads the gRPC status code and the ErrorInfo reason of a failed berth call.
 *
 * Returns undefined when `err` is not a `ConnectError` (every failure of a call made through a
 * berth client is one: errors from the server, timeouts, cancellations and network failures), so
 * unexpected errors can be rethrown unchanged:
 *
 * ```ts
 * try {
 *   await client.workspaces.getWorkspace({ workspaceId: "bot-1" });
 * } catch (err) {
 *   const info = berthErrorInfo(err);
 *   if (info?.reason !== "WORKSPACE_NOT_FOUND") throw err;
 * }
 * ```
 */
export function berthErrorInfo(err: unknown): BerthErrorInfo | undefined {
  if (!(err instanceof ConnectError)) {
    return undefined;
  }
  const infos = err.findDetails(ErrorInfoSchema);
  const info = infos.find((i) => i.domain === BERTH_ERROR_DOMAIN) ?? infos[0];
  return {
    code: err.code,
    codeName: codeNames[err.code] ?? `CODE_${err.code}`,
    reason: info?.reason || undefined,
    domain: info?.domain || undefined,
    metadata: { ...(info?.metadata ?? {}) },
    message: err.rawMessage,
  };
}
