package berth

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo every berth error carries.
const ErrorDomain = "berth.dev"

// Error is a failed berth call, decoded from its gRPC status: the status code, the message, and
// the reason and metadata of the berth ErrorInfo in the status details.
//
// Branch on Reason (the name of a workspacev1.ErrorReason value, such as
// "WORKSPACE_NOT_FOUND") rather than on Message; treat reasons you do not know by Code.
type Error struct {
	// Code is the gRPC status code, for example codes.NotFound.
	Code codes.Code
	// Reason is the ErrorInfo reason, for example "WORKSPACE_NOT_FOUND". Empty when the status
	// carries no ErrorInfo of domain ErrorDomain (for example errors raised by grpc-go itself,
	// such as codes.Unavailable when the server cannot be reached).
	Reason string
	// Message is the human-readable status message.
	Message string
	// Metadata is the ErrorInfo metadata, for example {"workspace_id": "bot-1"}. Nil when absent.
	Metadata map[string]string
	// Status is the full decoded status, for callers that need other details.
	Status *status.Status
}

// Error formats the error as "CODE REASON: message" ("NotFound WORKSPACE_NOT_FOUND: ...").
func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("%s: %s", e.Code, e.Message)
	}
	return fmt.Sprintf("%s %s: %s", e.Code, e.Reason, e.Message)
}

// GRPCStatus returns the underlying status, so that status.FromError and status.Code keep
// working on an *Error.
func (e *Error) GRPCStatus() *status.Status {
	if e.Status != nil {
		return e.Status
	}
	return status.New(e.Code, e.Message)
}

// ErrorReason returns Reason as a workspacev1.ErrorReason, or
// ErrorReason_ERROR_REASON_UNSPECIFIED when Reason is empty or not known to this SDK version.
func (e *Error) ErrorReason() workspacev1.ErrorReason {
	return workspacev1.ErrorReason(workspacev1.ErrorReason_value[e.Reason])
}

// AsError decodes a gRPC error returned by a berth call. It reports false for nil and for errors
// that carry no gRPC status (status.FromError fails on them), such as io.EOF. Wrapped errors
// are unwrapped, and an *Error is returned as it is.
func AsError(err error) (*Error, bool) {
	if err == nil {
		return nil, false
	}
	var be *Error
	if errors.As(err, &be) {
		return be, true
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	e := &Error{Code: st.Code(), Message: st.Message(), Status: st}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			e.Reason = info.GetReason()
			e.Metadata = info.GetMetadata()
			break
		}
	}
	return e, true
}

// ErrorReason returns the gRPC code and the berth ErrorInfo reason of err. ok is false when err
// is nil or carries no gRPC status; reason is empty when the status has no berth ErrorInfo.
func ErrorReason(err error) (code codes.Code, reason string, ok bool) {
	e, ok := AsError(err)
	if !ok {
		return codes.OK, "", false
	}
	return e.Code, e.Reason, true
}

// IsReason reports whether err is a berth error with the given reason, for example
// IsReason(err, workspacev1.ErrorReason_WORKSPACE_NOT_FOUND).
func IsReason(err error, reason workspacev1.ErrorReason) bool {
	e, ok := AsError(err)
	return ok && e.Reason != "" && e.Reason == reason.String()
}
