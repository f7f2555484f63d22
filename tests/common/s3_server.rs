//! The S3 server of the tests (and of `bench/run`, as the example `s3_server`): s3s with its
//! file-system backend, signature checking on, serving `root` on `addr`.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::net::SocketAddr;
use std::path::Path;

pub const ACCESS_KEY: &str = "dbkeep-test-access";
pub const SECRET_KEY: &str = "dbkeep-test-secret-Zx9!";
/// Write-once credentials, as an offsite copy should have: every delete is denied (and the
/// listing of multipart uploads, which such policies often leave out).
pub const WRITE_ONCE_ACCESS_KEY: &str = "dbkeep-test-write-once";
pub const WRITE_ONCE_SECRET_KEY: &str = "dbkeep-test-worm-Qq4!";

/// A service that ignores conditional writes (`If-None-Match`, `If-Match` on PUT and on the
/// completion of a multipart upload), as some S3-compatible services do: every write
/// overwrites. Everything else is s3s-fs.
struct IgnoresConditions(s3s_fs::FileSystem);

macro_rules! ignoring_conditions {
    ($($op:ident: $input:ident -> $output:ident;)*) => {
        #[async_trait::async_trait]
        impl s3s::S3 for IgnoresConditions {
            $(async fn $op(
                &self,
                req: s3s::S3Request<s3s::dto::$input>,
            ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                self.0.$op(req).await
            })*

            async fn put_object(
                &self,
                mut req: s3s::S3Request<s3s::dto::PutObjectInput>,
            ) -> s3s::S3Result<s3s::S3Response<s3s::dto::PutObjectOutput>> {
                req.input.if_none_match = None;
                req.input.if_match = None;
                self.0.put_object(req).await
            }

            async fn complete_multipart_upload(
                &self,
                mut req: s3s::S3Request<s3s::dto::CompleteMultipartUploadInput>,
            ) -> s3s::S3Result<s3s::S3Response<s3s::dto::CompleteMultipartUploadOutput>> {
                req.input.if_none_match = None;
                req.input.if_match = None;
                self.0.complete_multipart_upload(req).await
            }
        }
    };
}

ignoring_conditions! {
    copy_object: CopyObjectInput -> CopyObjectOutput;
    delete_object: DeleteObjectInput -> DeleteObjectOutput;
    delete_objects: DeleteObjectsInput -> DeleteObjectsOutput;
    get_object: GetObjectInput -> GetObjectOutput;
    head_bucket: HeadBucketInput -> HeadBucketOutput;
    head_object: HeadObjectInput -> HeadObjectOutput;
    list_objects: ListObjectsInput -> ListObjectsOutput;
    list_objects_v2: ListObjectsV2Input -> ListObjectsV2Output;
    create_multipart_upload: CreateMultipartUploadInput -> CreateMultipartUploadOutput;
    upload_part: UploadPartInput -> UploadPartOutput;
    upload_part_copy: UploadPartCopyInput -> UploadPartCopyOutput;
    list_parts: ListPartsInput -> ListPartsOutput;
    abort_multipart_upload: AbortMultipartUploadInput -> AbortMultipartUploadOutput;
}

/// Signed requests only; the write-once credentials may not delete.
struct DenyDeletes;

#[async_trait::async_trait]
impl s3s::access::S3Access for DenyDeletes {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        match cx.credentials() {
            None => Err(s3s::s3_error!(AccessDenied, "signed requests only")),
            Some(c)
                if c.access_key == WRITE_ONCE_ACCESS_KEY
                    && matches!(
                        cx.s3_op().name(),
                        "DeleteObject"
                            | "DeleteObjects"
                            | "AbortMultipartUpload"
                            | "ListMultipartUploads"
                    ) =>
            {
                Err(s3s::s3_error!(
                    AccessDenied,
                    "write-once credentials may not delete or list uploads"
                ))
            }
            Some(_) => Ok(()),
        }
    }
}

/// Serves `root` (its subdirectories are buckets) on `addr` from a runtime of its own; dropping
/// or shutting down the runtime stops the server and drops every connection.
pub fn serve(root: &Path, addr: SocketAddr) -> (tokio::runtime::Runtime, SocketAddr) {
    serve_as(root, addr, false)
}

/// [`serve`], by a service that ignores conditional writes when `ignores_conditions`.
pub fn serve_as(
    root: &Path,
    addr: SocketAddr,
    ignores_conditions: bool,
) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs");
    let mut b = if ignores_conditions {
        S3ServiceBuilder::new(IgnoresConditions(fs))
    } else {
        S3ServiceBuilder::new(fs)
    };
    let mut auth = SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY);
    auth.register(
        WRITE_ONCE_ACCESS_KEY.to_owned(),
        WRITE_ONCE_SECRET_KEY.to_owned().into(),
    );
    b.set_auth(auth);
    b.set_access(DenyDeletes);
    let service = b.build();
    let listener = rt.block_on(async {
        // The port may take a moment to be free again after a stop.
        let mut tries = 0;
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        }
    });
    let local = listener.local_addr().expect("local addr");
    rt.spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (rt, local)
}
