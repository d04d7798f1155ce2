package client

import (
	"encoding/json"
	"fmt"

	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// EncodePayload turns a Go value into a task payload: a *vowv1.Payload is
// used as it is, a []byte becomes binary data ("application/octet-stream"),
// and anything else is encoded with encoding/json, so structs with json tags
// work as they do everywhere else in Go.
func EncodePayload(v any) (*vowv1.Payload, error) {
	switch v := v.(type) {
	case *vowv1.Payload:
		return v, nil
	case []byte:
		return Binary(v, "application/octet-stream"), nil
	}
	encoded, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode payload: %w", err)
	}
	// A detour through JSON text because structpb.NewValue takes only
	// maps, slices and scalars, not structs.
	value := &structpb.Value{}
	if err := protojson.Unmarshal(encoded, value); err != nil {
		return nil, fmt.Errorf("encode payload: %w", err)
	}
	return &vowv1.Payload{Data: &vowv1.Payload_Json{Json: value}}, nil
}

// Binary returns a payload of raw bytes with their MIME type.
func Binary(data []byte, contentType string) *vowv1.Payload {
	return &vowv1.Payload{Data: &vowv1.Payload_Binary{Binary: data}, ContentType: contentType}
}

// DecodePayload stores a payload in the value v points to: JSON data as
// encoding/json would, binary data into a *[]byte. A missing payload decodes
// as JSON null, which leaves v as it is.
func DecodePayload(payload *vowv1.Payload, v any) error {
	switch data := payload.GetData().(type) {
	case *vowv1.Payload_Binary:
		target, ok := v.(*[]byte)
		if !ok {
			return fmt.Errorf("decode payload: binary data (%q) needs a *[]byte, not %T", payload.GetContentType(), v)
		}
		*target = data.Binary
		return nil
	case *vowv1.Payload_Json:
		encoded, err := protojson.Marshal(data.Json)
		if err != nil {
			return fmt.Errorf("decode payload: %w", err)
		}
		if err := json.Unmarshal(encoded, v); err != nil {
			return fmt.Errorf("decode payload: %w", err)
		}
		return nil
	default:
		return nil
	}
}

// Output decodes the output of a task that SUCCEEDED into v (see
// DecodePayload). For a task that FAILED or was CANCELLED it returns the
// task's error (see TaskError), so one check covers both.
func Output(task *vowv1.Task, v any) error {
	switch task.GetState() {
	case vowv1.TaskState_TASK_STATE_SUCCEEDED:
		return DecodePayload(task.GetOutput(), v)
	case vowv1.TaskState_TASK_STATE_FAILED, vowv1.TaskState_TASK_STATE_CANCELLED:
		return TaskError(task)
	default:
		return fmt.Errorf("task %s is %s: it has not finished", task.GetId(), task.GetState())
	}
}
