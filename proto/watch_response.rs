//! `vow.v1.WatchResponse`, written out rather than generated so that a server
//! can send one encoding of a task to every watcher of the same change.
//!
//! When a task that 10,000 streams watch changes, converting and encoding the
//! task once per stream was a quarter of the server's work per watcher. A
//! generated message can only hold a `Task`; this one can also hold a `Task`
//! already encoded, which it writes as is. On the wire, and to every reader,
//! it is the message `proto/vow/v1/task_service.proto` declares: the build
//! points prost at this type with `extern_path`. Tests check that it encodes
//! and decodes as a derived message would, and that the .proto still declares
//! exactly the two fields it handles.

use std::fmt;

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{self, DecodeContext, WireType},
};

use crate::v1::{Task, WatchEventType};

const TYPE_TAG: u32 = 1;
const TASK_TAG: u32 = 2;

/// One message of a watch.
///
/// Two messages are equal when their fields are, the encoded task included:
/// one made by [`WatchResponse::with_encoded_task`] never equals a decoded one.
#[derive(Clone, Default, PartialEq)]
pub struct WatchResponse {
    /// What this message is (a [`WatchEventType`]).
    pub r#type: i32,
    /// The task after the change (unset for heartbeats).
    pub task: Option<Task>,
    /// The task already encoded, sent in place of `task` (which is then
    /// ignored); never set by decoding.
    encoded_task: Option<Bytes>,
}

impl WatchResponse {
    /// A message whose task is sent as `encoded_task`, which must be the
    /// protobuf encoding of a [`Task`] (as `Task::encode_to_vec` makes it).
    pub fn with_encoded_task(event_type: WatchEventType, encoded_task: Bytes) -> Self {
        Self {
            r#type: event_type as i32,
            task: None,
            encoded_task: Some(encoded_task),
        }
    }

    /// What this message is; `Unspecified` for a value this version does not know.
    pub fn r#type(&self) -> WatchEventType {
        WatchEventType::try_from(self.r#type).unwrap_or_default()
    }

    pub fn set_type(&mut self, value: WatchEventType) {
        self.r#type = value as i32;
    }
}

impl fmt::Debug for WatchResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("WatchResponse");
        match WatchEventType::try_from(self.r#type) {
            Ok(known) => debug.field("r#type", &known),
            Err(_) => debug.field("r#type", &self.r#type),
        };
        match &self.encoded_task {
            Some(encoded) => debug.field("encoded_task_bytes", &encoded.len()),
            None => debug.field("task", &self.task),
        };
        debug.finish()
    }
}

impl Message for WatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.r#type != 0 {
            encoding::int32::encode(TYPE_TAG, &self.r#type, buf);
        }
        if let Some(encoded_task) = &self.encoded_task {
            encoding::bytes::encode(TASK_TAG, encoded_task, buf);
        } else if let Some(task) = &self.task {
            encoding::message::encode(TASK_TAG, task, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            TYPE_TAG => encoding::int32::merge(wire_type, &mut self.r#type, buf, ctx).map_err(
                |mut error| {
                    error.push("WatchResponse", "r#type");
                    error
                },
            ),
            TASK_TAG => encoding::message::merge(
                wire_type,
                self.task.get_or_insert_with(Task::default),
                buf,
                ctx,
            )
            .map_err(|mut error| {
                error.push("WatchResponse", "task");
                error
            }),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let type_len = if self.r#type != 0 {
            encoding::int32::encoded_len(TYPE_TAG, &self.r#type)
        } else {
            0
        };
        let task_len = match (&self.encoded_task, &self.task) {
            (Some(encoded_task), _) => encoding::bytes::encoded_len(TASK_TAG, encoded_task),
            (None, Some(task)) => encoding::message::encoded_len(TASK_TAG, task),
            (None, None) => 0,
        };
        type_len + task_len
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Payload, TaskState, payload};

    /// The message as protoc's output for `vow.v1.WatchResponse` would be.
    #[derive(Clone, PartialEq, prost::Message)]
    struct GeneratedWatchResponse {
        #[prost(enumeration = "WatchEventType", tag = "1")]
        r#type: i32,
        #[prost(message, optional, tag = "2")]
        task: Option<Task>,
    }

    fn task() -> Task {
        Task {
            id: "0af3c1e2d4b5a69788796a5b4c3d2e1f".to_owned(),
            kind: "echo".to_owned(),
            state: TaskState::Succeeded as i32,
            revision: 7,
            output: Some(Payload {
                data: Some(payload::Data::Binary(vec![1, 2, 3])),
                content_type: "application/octet-stream".to_owned(),
            }),
            labels: [("team".to_owned(), "search".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn encodes_as_the_generated_message() {
        for (event_type, task) in [
            (WatchEventType::Change, Some(task())),
            (WatchEventType::Snapshot, Some(Task::default())),
            (WatchEventType::Heartbeat, None),
            (WatchEventType::Unspecified, None),
        ] {
            let generated = GeneratedWatchResponse {
                r#type: event_type as i32,
                task: task.clone(),
            };
            let written = WatchResponse {
                r#type: event_type as i32,
                task: task.clone(),
                encoded_task: None,
            };
            assert_eq!(written.encode_to_vec(), generated.encode_to_vec());
            assert_eq!(written.encoded_len(), generated.encoded_len());
            assert_eq!(
                WatchResponse::decode(generated.encode_to_vec().as_slice()).unwrap(),
                written
            );
        }
    }

    #[test]
    fn an_encoded_task_is_sent_as_the_task_would_be() {
        let task = task();
        let shared = WatchResponse::with_encoded_task(
            WatchEventType::Change,
            Bytes::from(task.encode_to_vec()),
        );
        let generated = GeneratedWatchResponse {
            r#type: WatchEventType::Change as i32,
            task: Some(task.clone()),
        };
        assert_eq!(shared.encode_to_vec(), generated.encode_to_vec());
        assert_eq!(shared.encoded_len(), generated.encoded_len());

        let decoded = WatchResponse::decode(shared.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.r#type(), WatchEventType::Change);
        assert_eq!(decoded.task, Some(task));
        assert_eq!(decoded.encoded_task, None);
    }

    #[test]
    fn unknown_fields_and_types_are_tolerated() {
        let mut bytes = GeneratedWatchResponse {
            r#type: 99,
            task: None,
        }
        .encode_to_vec();
        // Field 15, a string a later version might add.
        encoding::string::encode(15, &"later".to_owned(), &mut bytes);
        let decoded = WatchResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.r#type, 99);
        assert_eq!(decoded.r#type(), WatchEventType::Unspecified);
    }

    /// The .proto may grow a field that this type would drop without a word:
    /// this test fails first.
    #[test]
    fn the_proto_declares_exactly_the_fields_handled_here() {
        use prost_types::field_descriptor_proto::{Label, Type};

        let files = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
        let message = files
            .file
            .iter()
            .filter(|file| file.package() == "vow.v1")
            .flat_map(|file| &file.message_type)
            .find(|message| message.name() == "WatchResponse")
            .expect("vow.v1.WatchResponse is declared");
        let fields: Vec<_> = message
            .field
            .iter()
            .map(|field| {
                (
                    field.number(),
                    field.name(),
                    field.r#type(),
                    field.type_name(),
                    field.label(),
                )
            })
            .collect();
        assert_eq!(
            fields,
            [
                (
                    TYPE_TAG as i32,
                    "type",
                    Type::Enum,
                    ".vow.v1.WatchEventType",
                    Label::Optional
                ),
                (
                    TASK_TAG as i32,
                    "task",
                    Type::Message,
                    ".vow.v1.Task",
                    Label::Optional
                ),
            ]
        );
        assert!(message.oneof_decl.is_empty());
    }

    #[test]
    fn debug_names_the_event_type() {
        let shared =
            WatchResponse::with_encoded_task(WatchEventType::Change, Bytes::from_static(&[0; 3]));
        assert_eq!(
            format!("{shared:?}"),
            "WatchResponse { r#type: Change, encoded_task_bytes: 3 }"
        );
        let unknown = WatchResponse {
            r#type: 99,
            ..Default::default()
        };
        assert_eq!(
            format!("{unknown:?}"),
            "WatchResponse { r#type: 99, task: None }"
        );
    }

    #[test]
    fn a_truncated_message_is_an_error() {
        let bytes = GeneratedWatchResponse {
            r#type: WatchEventType::Change as i32,
            task: Some(task()),
        }
        .encode_to_vec();
        assert!(WatchResponse::decode(&bytes[..bytes.len() - 3]).is_err());
    }
}
